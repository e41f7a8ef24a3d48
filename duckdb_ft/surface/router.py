"""Routes one SQL statement: duckdb-ft's own statements to their handlers, everything else to DuckDB.

The shell, ``duckdb_ft.connect()``'s connections and ``duckdb_ft.execute(con, sql)`` send every statement through
:func:`run`, so statements DuckDB cannot parse (GRANT, CREATE ROLE, SHOW MODELS, ...) work there, and a
non-administrator session's plain SQL is authorized on DuckDB's own parse and plan before DuckDB runs it, one
statement at a time; a table or view it creates belongs to its role from the same transaction on.
"""

from __future__ import annotations

from typing import Any

from ..catalog import access as accessdb
from ..governance.authorize import authorize, run_owned
from ..governance.ownership import check_admin_create
from . import statements
from .engine import Session


def run(session: Session, con: Any, sql: str, params: Any = None) -> Any:
    """Run one statement for ``session``: a pyarrow Table for duckdb-ft statements, else DuckDB's result."""
    st = statements.parse_ft_statement(sql) if isinstance(sql, str) else None
    if st is not None:
        return statements.run(session, st)
    if session.is_admin:
        before_admin(session, con, sql)
        result = con.sql(sql, params=params) if params else con.sql(sql)
        forget_dropped(session, sql)
        return result
    decisions = authorize(session, sql, con, params)
    result = None
    for d in decisions:
        text = sql if len(decisions) == 1 else d.text

        def execute(text: str = text) -> Any:
            return con.sql(text, params=params) if params else con.sql(text)

        result = run_owned(session, con, d, execute) if d.creates or d.drops else execute()
    return result


def before_admin(session: Session, con: Any, sql: Any) -> None:
    """Before the administrator's plain SQL: CREATE ... IF NOT EXISTS over another role's object is an error."""
    check_admin_create(session, con if con is not None else session.engine.cursor(), sql)


def forget_dropped(session: Session, sql: str) -> None:
    """After the administrator's plain SQL: a DROP takes the owner rows of what it dropped (a name reused later
    is not the old owner's)."""
    if isinstance(sql, str) and "drop" in sql.lower() and not session.engine.read_only:
        try:
            accessdb.prune_owners(session.engine.cursor())
        except Exception:  # the statement ran; bookkeeping must not turn it into an error
            pass
