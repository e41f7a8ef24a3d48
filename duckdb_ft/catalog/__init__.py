"""The ``duckdb_ft`` schema inside the user's database: migrations, and one repository per kind of object.

- :mod:`.migrations`: the append-only list of named schema changes, applied once each on every open.
- :mod:`.jobs`: jobs, their row snapshots, per-step metrics and checkpoints.
- :mod:`.models`: fine-tuned models and their versions (adapter weights as safetensors bytes).
- :mod:`.access`: roles, role members, grants and object owners.
- :mod:`.users`: users, their password hashes and access tokens (hashes only).
- :mod:`.settings`: database settings the administrator sets (the AISQL functions' default model).
- :mod:`.usage`: the usage history of COMPLETE, TRY_COMPLETE, EVALUATE and jobs, counted in memory and flushed.
- :mod:`.objects`: what DuckDB's own catalog says of the user's schemas, tables and views.

This module holds what they share: the schema name, the clock, one-row reads, the one transaction helper, and
Arrow tables registered as views for the length of a block.
Nothing here imports anything of duckdb-ft but the errors.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

SCHEMA = "duckdb_ft"
JOB_STATUSES = ("PENDING", "IN_PROGRESS", "SUCCESS", "ERROR", "CANCELLED")
ACTIVE = ("PENDING", "IN_PROGRESS")


def now_ms() -> int:
    return int(time.time() * 1000)


def one(cur: Any, sql: str, params: list | None = None) -> tuple | None:
    """The first row of a query, or None. Fetches everything: DuckDB 2 keeps a connection busy until a result
    is exhausted, so a bare ``fetchone()`` would block the next statement on the same cursor."""
    rows = cur.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def dicts(rel: Any) -> list[dict[str, Any]]:
    """Every row of a result as a dict keyed by column name."""
    cols = [d[0] for d in rel.description]
    return [dict(zip(cols, row)) for row in rel.fetchall()]


@contextlib.contextmanager
def transaction(cur: Any) -> Iterator[Any]:
    """``with transaction(cur):`` runs the block in one DuckDB transaction: committed if it ends normally, rolled
    back on any exception (KeyboardInterrupt included), which is re-raised."""
    cur.execute("BEGIN TRANSACTION")
    try:
        yield cur
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    cur.execute("COMMIT")


@contextlib.contextmanager
def registered(cur: Any, name: str, table: Any) -> Iterator[str]:
    """``with registered(cur, name, arrow):`` the Arrow table (or record batch) is the view ``name`` of ``cur`` for
    the block, and unregistered after it, whether the block ends normally or not."""
    cur.register(name, table)
    try:
        yield name
    finally:
        cur.unregister(name)
