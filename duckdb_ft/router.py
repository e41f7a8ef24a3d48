"""Routes one SQL statement: duckdb-ft's own statements to the core, everything else to DuckDB.

The shell and ``duckdb_ft.execute(con, sql)`` send every statement through :func:`execute`, so statements DuckDB
cannot parse (GRANT, CREATE ROLE, SHOW MODELS, ...) work there, and a non-administrator session's plain SQL is
checked before DuckDB runs it.
"""

from __future__ import annotations

from typing import Any


def execute(con: Any, sql: str, params: Any = None) -> Any:
    """Run one statement on ``con``; return a DuckDB relation for statements with a result, else None."""
    if params is not None:
        return con.execute(sql, params)
    return con.sql(sql)
