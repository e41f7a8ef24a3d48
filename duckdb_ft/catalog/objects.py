"""What DuckDB's own catalog says of the user's schemas, tables and views (read only)."""

from __future__ import annotations

from typing import Any

from . import SCHEMA, one

def has_catalog(cur: Any) -> bool:
    return one(cur, "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = 'models'",
               [SCHEMA]) is not None


def schema_exists(cur: Any, schema: str) -> bool:
    return one(cur, "SELECT 1 FROM information_schema.schemata WHERE schema_name = ?", [schema]) is not None


def view_sql(cur: Any, qualified: str) -> str | None:
    schema, name = qualified.split(".", 1)
    row = one(cur, "SELECT sql FROM duckdb_views() WHERE schema_name = ? AND view_name = ? AND NOT internal",
              [schema, name])
    return row[0] if row else None


def relation_kind(cur: Any, qualified: str) -> str | None:
    """'TABLE', 'VIEW' or None for a qualified name in the database."""
    schema, name = qualified.split(".", 1)
    row = one(cur, "SELECT table_type FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
              [schema, name])
    if row is None:
        return None
    return "VIEW" if "VIEW" in row[0].upper() else "TABLE"
