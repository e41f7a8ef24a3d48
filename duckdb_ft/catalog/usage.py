"""Usage history, as Cortex accounts for it: per hour, function, model (version) and role, how many calls, rows,
prompt and completion tokens and errors; training jobs add their trained tokens from ``jobs``.

Counting must cost next to nothing beside generation and lose nothing when several cursors complete at once, so
callers :meth:`UsageRecorder.add` counts to an in-memory aggregate (under a lock) and :meth:`UsageRecorder.flush`
writes what has gathered in one transaction, one flush at a time: one write per call batch, never one per row. A
flush that fails (a conflicting write of someone else's, a read-only database) keeps its counts for the next one.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from . import SCHEMA, dicts, transaction

#: (start of the hour in epoch ms, function, model, version or '', role)
Key = tuple[int, str, str, str, str]
COUNTS = ("calls", "rows", "prompt_tokens", "completion_tokens", "errors")
HOUR_MS = 3_600_000


def hour_of(ms: int | None = None) -> int:
    """The start of the hour (epoch ms, UTC) that ``ms`` (default: now) falls in."""
    ms = int(time.time() * 1000) if ms is None else ms
    return ms - ms % HOUR_MS


class UsageRecorder:
    """The usage of one open database: counts gathered in memory, flushed to ``duckdb_ft.usage``."""

    def __init__(self, cursor: Callable[[], Any], writable: bool = True):
        self._cursor_factory, self._cur = cursor, None
        self.writable = writable
        self._lock = threading.Lock()  # guards _pending
        self._flush_lock = threading.Lock()  # one flush transaction at a time (and guards _cur)
        self._pending: dict[Key, list[int]] = {}

    def add(self, function: str, model: str, version: str | None, role: str, *, calls: int = 1, rows: int = 0,
            prompt_tokens: int = 0, completion_tokens: int = 0, errors: int = 0) -> None:
        key = (hour_of(), function, model[:256], version or "", role)
        with self._lock:
            counts = self._pending.setdefault(key, [0] * len(COUNTS))
            for i, v in enumerate((calls, rows, prompt_tokens, completion_tokens, errors)):
                counts[i] += v

    def flush(self) -> bool:
        """Write every gathered count in one transaction; False (counts kept for the next flush) if it failed."""
        if not self.writable:
            return False
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return True
            try:
                if self._cur is None:
                    self._cur = self._cursor_factory()
                write(self._cur, batch)
                return True
            except Exception:
                with self._lock:  # nothing of the batch was committed: merge it back
                    for key, counts in batch.items():
                        mine = self._pending.setdefault(key, [0] * len(COUNTS))
                        for i, v in enumerate(counts):
                            mine[i] += v
                return False


def write(cur: Any, batch: dict[Key, list[int]]) -> None:
    """Add ``batch``'s counts to the usage table in one transaction."""
    sets = ", ".join(f"{c} = {c} + ?" for c in COUNTS)
    with transaction(cur):
        for (hour, function, model, version, role), counts in batch.items():
            key = [hour, function, model, version, role]
            updated = cur.execute(f"UPDATE {SCHEMA}.usage SET {sets} WHERE start_ms = ? AND function_name = ? "
                                  "AND model_name = ? AND version = ? AND role = ? RETURNING 1",
                                  counts + key).fetchall()
            if not updated:
                cur.execute(f"INSERT INTO {SCHEMA}.usage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", key + counts)


def read(cur: Any, roles: list[str] | None) -> list[dict[str, Any]]:
    """Usage per hour, function, model, version and role, oldest first; only ``roles``' rows (None: everyone's).

    FINETUNE rows come from the jobs: one call per job that trained, in the hour it finished (or started), its
    rows, trained tokens, and an error when it failed."""
    where, params = ("", []) if roles is None else (f"WHERE role IN ({', '.join('?' * len(roles))})", list(roles))
    return dicts(cur.execute(f"""
        WITH u AS (
            SELECT start_ms, function_name, model_name, nullif(version, '') AS version, role, calls, rows,
                   prompt_tokens, completion_tokens, errors, 0 AS trained_tokens FROM {SCHEMA}.usage
            UNION ALL
            SELECT coalesce(finished_on, started_on) - coalesce(finished_on, started_on) % {HOUR_MS}, 'FINETUNE',
                   schema_name || '.' || model_name, coalesce(model_version, 'v1'), coalesce(owner, 'admin'), 1,
                   coalesce(train_rows, 0), 0, 0, (status = 'ERROR')::INT, coalesce(trained_tokens, 0)
            FROM {SCHEMA}.jobs WHERE started_on IS NOT NULL)
        SELECT make_timestamp(start_ms * 1000) AS start_time, make_timestamp((start_ms + {HOUR_MS}) * 1000)
                   AS end_time, function_name, model_name, version, role, sum(calls)::BIGINT AS calls,
               sum(rows)::BIGINT AS rows, sum(prompt_tokens)::BIGINT AS prompt_tokens,
               sum(completion_tokens)::BIGINT AS completion_tokens,
               sum(prompt_tokens + completion_tokens)::BIGINT AS tokens, sum(errors)::BIGINT AS errors,
               sum(trained_tokens)::BIGINT AS trained_tokens
        FROM u {where} GROUP BY ALL ORDER BY start_time, function_name, model_name, version, role""", params))
