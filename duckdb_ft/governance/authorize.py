"""A non-administrator's plain SQL: authorized before DuckDB runs it, and ownership of what it created.

Each statement is checked against what it reads (tables and views, views followed to their base tables), writes
and creates (:mod:`.reads`), with the privileges of the session's current role (:mod:`.roles`). Anything not
listed in :data:`USER_STATEMENTS` is for the administrator only.
"""

from __future__ import annotations

from typing import Any

from .. import catalog
from ..catalog import access as accessdb, objects
from ..errors import InvalidArgument, PermissionDenied
from ..queries import DIALECT, parse
from .reads import analyze

#: Plain statements a non-administrator may run (each authorized by what it reads, writes or creates).
USER_STATEMENTS = {"SELECT", "INSERT", "UPDATE", "DELETE", "CREATE TABLE", "CREATE VIEW", "DROP TABLE",
                   "DROP VIEW", "DESCRIBE", "SHOW", "TRANSACTION", "COMMIT", "ROLLBACK", "SET VARIABLE"}


def authorize(session: Any, sql: str) -> None:
    """Check a non-administrator's plain SQL before DuckDB runs it; raise PermissionDenied if not allowed."""
    try:
        parsed = parse(sql)
    except InvalidArgument as e:
        raise PermissionDenied(f"cannot check this statement, so role {session.role} may not run it: {e}") from None
    for stmt in parsed:
        acc = analyze(stmt.sql(dialect=DIALECT), session.schema)
        check = session.checker()
        if acc.kind not in USER_STATEMENTS:
            raise PermissionDenied(f"Insufficient privileges: {acc.kind} is for the administrator only "
                                   f"(current role: {session.role})")
        touched = acc.writes | ({acc.creates[1]} if acc.creates else set())
        if any(n.split(".", 1)[0] == catalog.SCHEMA for n in touched):
            raise PermissionDenied(f"Insufficient privileges to operate on schema '{catalog.SCHEMA}': the duckdb-ft "
                                   "catalog changes only through its functions and statements")
        check.require_read(acc.reads, acc.table_functions)
        if acc.kind in ("INSERT", "UPDATE", "DELETE"):
            for name in acc.writes:
                check.require(acc.kind, objects.relation_kind(session.engine.cursor(), name) or "TABLE", name)
        elif acc.creates:
            kind, name = acc.creates
            check.require(f"CREATE {kind}", "SCHEMA", name.split(".", 1)[0])
        elif acc.kind in ("DROP TABLE", "DROP VIEW"):
            for name in acc.writes:
                check.require_owner(acc.kind.split()[1], name, acc.kind)


def record_owner(session: Any, sql: str) -> None:
    """After a non-administrator's statement ran: the tables and views it created belong to the current role."""
    for stmt in parse(sql):
        acc = analyze(stmt.sql(dialect=DIALECT), session.schema)
        if acc.creates:
            accessdb.set_owner(session.engine.cursor(), acc.creates[0], acc.creates[1], session.role)
