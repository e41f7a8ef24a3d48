"""Users, their password hashes and their programmatic access tokens: only hashes are stored, never a secret.

A token's row is found by its public id (the part of the token before its secret), so authentication reads one
row. Names are compared as stored (the grammar folds unquoted names to lower case).
"""

from __future__ import annotations

from typing import Any

from . import SCHEMA, dicts, now_ms, one, transaction

_TOKEN_COLUMNS = "t.id, t.user_name, t.name, t.secret_hash, t.role_restriction, t.expires_at, t.created_on"


def get_user(cur: Any, name: str) -> dict[str, Any] | None:
    """The user's row (name, password_hash, default_role, created_on), or None."""
    rows = dicts(cur.execute(f"SELECT name, password_hash, default_role, created_on FROM {SCHEMA}.users "
                             "WHERE name = ?", [name]))
    return rows[0] if rows else None


def user_exists(cur: Any, name: str) -> bool:
    return one(cur, f"SELECT 1 FROM {SCHEMA}.users WHERE name = ?", [name]) is not None


def create_user(cur: Any, name: str, password_hash: str | None, default_role: str | None) -> None:
    cur.execute(f"INSERT INTO {SCHEMA}.users VALUES (?, ?, ?, ?)", [name, password_hash, default_role, now_ms()])


def set_password(cur: Any, name: str, password_hash: str | None) -> None:
    cur.execute(f"UPDATE {SCHEMA}.users SET password_hash = ? WHERE name = ?", [password_hash, name])


def set_default_role(cur: Any, name: str, role: str | None) -> None:
    cur.execute(f"UPDATE {SCHEMA}.users SET default_role = ? WHERE name = ?", [role, name])


def default_role(cur: Any, name: str) -> str | None:
    """The DEFAULT_ROLE a user was given, or None (no such user, or none given)."""
    row = one(cur, f"SELECT default_role FROM {SCHEMA}.users WHERE name = ?", [name])
    return row[0] if row else None


def drop_user(cur: Any, name: str) -> None:
    """The user, its tokens and the roles granted to it go together."""
    with transaction(cur):
        cur.execute(f"DELETE FROM {SCHEMA}.user_tokens WHERE user_name = ?", [name])
        cur.execute(f"DELETE FROM {SCHEMA}.role_members WHERE member_kind = 'USER' AND member = ?", [name])
        cur.execute(f"DELETE FROM {SCHEMA}.users WHERE name = ?", [name])


def list_users(cur: Any) -> list[dict[str, Any]]:
    """Every user: name, default_role, has_password, created_on (never a hash)."""
    return dicts(cur.execute(f"SELECT name, default_role, password_hash IS NOT NULL AS has_password, "
                             f"make_timestamp(created_on * 1000) AS created_on FROM {SCHEMA}.users ORDER BY name"))


def add_token(cur: Any, token_id: str, user: str, name: str, secret_hash: str, role: str | None,
              expires_at: int) -> None:
    cur.execute(f"INSERT INTO {SCHEMA}.user_tokens VALUES (?, ?, ?, ?, ?, ?, ?)",
                [token_id, user, name, secret_hash, role, expires_at, now_ms()])


def token_by_id(cur: Any, token_id: str) -> dict[str, Any] | None:
    """The token of this public id, if its user exists too; None otherwise."""
    rows = dicts(cur.execute(f"SELECT {_TOKEN_COLUMNS} FROM {SCHEMA}.user_tokens t "
                             f"JOIN {SCHEMA}.users u ON u.name = t.user_name WHERE t.id = ?", [token_id]))
    return rows[0] if rows else None


def token_named(cur: Any, user: str, name: str) -> dict[str, Any] | None:
    rows = dicts(cur.execute(f"SELECT {_TOKEN_COLUMNS} FROM {SCHEMA}.user_tokens t "
                             "WHERE t.user_name = ? AND t.name = ?", [user, name]))
    return rows[0] if rows else None


def count_tokens(cur: Any, user: str) -> int:
    return one(cur, f"SELECT count(*) FROM {SCHEMA}.user_tokens WHERE user_name = ?", [user])[0]


def remove_token(cur: Any, user: str, name: str) -> bool:
    return bool(cur.execute(f"DELETE FROM {SCHEMA}.user_tokens WHERE user_name = ? AND name = ? RETURNING id",
                            [user, name]).fetchall())


def list_tokens(cur: Any, user: str) -> list[dict[str, Any]]:
    """A user's tokens, oldest first: name, user_name, role_restriction, expires_at, created_on, status
    (ACTIVE or EXPIRED); never the hash."""
    return dicts(cur.execute(
        f"SELECT name, user_name, role_restriction, make_timestamp(expires_at * 1000) AS expires_at, "
        f"make_timestamp(created_on * 1000) AS created_on, "
        f"CASE WHEN expires_at > ? THEN 'ACTIVE' ELSE 'EXPIRED' END AS status "
        f"FROM {SCHEMA}.user_tokens WHERE user_name = ? ORDER BY created_on, name", [now_ms(), user]))
