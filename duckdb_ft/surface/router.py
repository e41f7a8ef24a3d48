"""Routes one SQL statement: duckdb-ft's own statements to their handlers, everything else to DuckDB.

The shell, ``duckdb_ft.connect()``'s connections and ``duckdb_ft.execute(con, sql)`` send every statement through
:func:`run`, so statements DuckDB cannot parse (GRANT, CREATE ROLE, SHOW MODELS, ...) work there, and a
non-administrator session's plain SQL is authorized before DuckDB runs it.
"""

from __future__ import annotations

from typing import Any

from ..governance.authorize import authorize, record_owner
from .grammar import parse_ft_statement
from .statements import HANDLERS


def run(session: Any, con: Any, sql: str, params: Any = None) -> Any:
    """Run one statement for ``session``: a pyarrow Table for duckdb-ft statements, else DuckDB's result."""
    st = parse_ft_statement(sql) if isinstance(sql, str) else None
    if st is not None:
        return HANDLERS[st.kind](session, st)
    if not session.is_admin:
        authorize(session, sql)
    result = con.sql(sql, params=params) if params else con.sql(sql)
    if not session.is_admin:
        record_owner(session, sql)
    return result
