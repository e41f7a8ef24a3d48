"""Roles, role members (users and roles), grants, and the owners of tables and views."""

from __future__ import annotations

from typing import Any

from . import SCHEMA, dicts, now_ms, one, transaction

def role_exists(cur: Any, role: str) -> bool:
    return one(cur, f"SELECT 1 FROM {SCHEMA}.roles WHERE name = ?", [role]) is not None


def create_role(cur: Any, role: str) -> None:
    cur.execute(f"INSERT INTO {SCHEMA}.roles VALUES (?, ?)", [role, now_ms()])


def drop_role(cur: Any, role: str) -> None:
    with transaction(cur):
        cur.execute(f"DELETE FROM {SCHEMA}.roles WHERE name = ?", [role])
        cur.execute(f"DELETE FROM {SCHEMA}.role_members WHERE role = ? OR (member_kind = 'ROLE' AND member = ?)",
                    [role, role])
        cur.execute(f"DELETE FROM {SCHEMA}.grants WHERE role = ?", [role])


def list_roles(cur: Any) -> list[dict[str, Any]]:
    return dicts(cur.execute(f"SELECT name, created_on FROM {SCHEMA}.roles ORDER BY name"))


def add_member(cur: Any, role: str, kind: str, member: str) -> None:
    if not one(cur, f"SELECT 1 FROM {SCHEMA}.role_members WHERE role = ? AND member_kind = ? AND member = ?",
               [role, kind, member]):
        cur.execute(f"INSERT INTO {SCHEMA}.role_members VALUES (?, ?, ?, ?)", [role, kind, member, now_ms()])


def remove_member(cur: Any, role: str, kind: str, member: str) -> bool:
    return bool(cur.execute(f"DELETE FROM {SCHEMA}.role_members WHERE role = ? AND member_kind = ? AND member = ? "
                            "RETURNING role", [role, kind, member]).fetchall())


def members(cur: Any) -> list[tuple[str, str, str]]:
    """Every (role, member_kind, member), oldest first."""
    return cur.execute(f"SELECT role, member_kind, member FROM {SCHEMA}.role_members ORDER BY granted_on").fetchall()


def add_grant(cur: Any, role: str, privilege: str, kind: str, name: str) -> None:
    if not one(cur, f"SELECT 1 FROM {SCHEMA}.grants WHERE role = ? AND privilege = ? AND object_kind = ? "
                    "AND object_name = ?", [role, privilege, kind, name]):
        cur.execute(f"INSERT INTO {SCHEMA}.grants VALUES (?, ?, ?, ?, ?)", [role, privilege, kind, name, now_ms()])


def remove_grant(cur: Any, role: str, privilege: str, kind: str, name: str) -> bool:
    return bool(cur.execute(f"DELETE FROM {SCHEMA}.grants WHERE role = ? AND privilege = ? AND object_kind = ? "
                            "AND object_name = ? RETURNING role", [role, privilege, kind, name]).fetchall())


def grants(cur: Any) -> list[tuple[str, str, str, str]]:
    """Every (role, privilege, object_kind, object_name)."""
    return cur.execute(f"SELECT role, privilege, object_kind, object_name FROM {SCHEMA}.grants "
                       "ORDER BY role, object_kind, object_name, privilege").fetchall()


def set_owner(cur: Any, kind: str, name: str, owner: str) -> None:
    cur.execute(f"DELETE FROM {SCHEMA}.object_owners WHERE object_kind = ? AND object_name = ?", [kind, name])
    cur.execute(f"INSERT INTO {SCHEMA}.object_owners VALUES (?, ?, ?)", [kind, name, owner])


def owner_of(cur: Any, kind: str, name: str) -> str | None:
    if kind == "MODEL":
        schema, model = name.split(".", 1)
        row = one(cur, f"SELECT owner FROM {SCHEMA}.models WHERE schema_name = ? AND name = ?", [schema, model])
    else:
        row = one(cur, f"SELECT owner FROM {SCHEMA}.object_owners WHERE object_kind = ? AND object_name = ?",
                  [kind, name])
    return row[0] if row else None


def forget_object(cur: Any, name: str) -> None:
    """A table or view was dropped: its owner row and the grants on it go with it."""
    cur.execute(f"DELETE FROM {SCHEMA}.object_owners WHERE object_kind IN ('TABLE', 'VIEW') AND object_name = ?",
                [name])
    cur.execute(f"DELETE FROM {SCHEMA}.grants WHERE object_kind IN ('TABLE', 'VIEW') AND object_name = ?", [name])


def prune_owners(cur: Any) -> None:
    """Owner rows of tables and views, and grants on sequences, that no longer exist (dropped by the
    administrator's plain SQL): a name reused later starts without them."""
    cur.execute(f"""DELETE FROM {SCHEMA}.grants WHERE object_kind = 'SEQUENCE' AND object_name NOT IN (
        SELECT schema_name || '.' || sequence_name FROM duckdb_sequences() WHERE database_name = current_database())""")
    cur.execute(f"""DELETE FROM {SCHEMA}.object_owners WHERE object_kind IN ('TABLE', 'VIEW') AND object_name NOT IN (
        SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE database_name = current_database()
        UNION ALL SELECT schema_name || '.' || view_name FROM duckdb_views()
        WHERE database_name = current_database() AND NOT internal)""")
