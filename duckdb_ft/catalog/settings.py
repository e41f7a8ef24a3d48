"""Database settings (``duckdb_ft.settings``): one value per name, set by the administrator's ``SET`` statement
and read where the setting applies (the AISQL functions' default model)."""

from __future__ import annotations

from typing import Any

from . import SCHEMA, now_ms, one, transaction


def get(cur: Any, name: str) -> str | None:
    """The value of setting ``name``, or None when it is not set."""
    row = one(cur, f"SELECT value FROM {SCHEMA}.settings WHERE name = ?", [name])
    return row[0] if row else None


def put(cur: Any, name: str, value: str, by: str) -> None:
    """Set ``name`` to ``value`` (replacing any value it had)."""
    with transaction(cur):
        cur.execute(f"DELETE FROM {SCHEMA}.settings WHERE name = ?", [name])
        cur.execute(f"INSERT INTO {SCHEMA}.settings VALUES (?, ?, ?, ?)", [name, value, by, now_ms()])


def unset(cur: Any, name: str) -> None:
    """Remove ``name``'s value (the setting's default applies again)."""
    cur.execute(f"DELETE FROM {SCHEMA}.settings WHERE name = ?", [name])
