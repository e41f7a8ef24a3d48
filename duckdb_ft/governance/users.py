"""Users and their access tokens as statements manage them: who may do what, and the checks on what is given.

The administrator creates, alters, drops and lists users. A user may change its own password and add, remove
and list its own tokens; a session an access token restricted to one role may not change the password (which
opens every role of the user) nor make a token of another role, so a token never makes a stronger one. Another
user's name gets the administrator's error whether that user exists or not.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..catalog import access as accessdb, users as usersdb
from ..errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from . import credentials
from .roles import ADMIN, PUBLIC

if TYPE_CHECKING:
    from ..surface.engine import Session

#: Snowflake's shortest password; the longest one (authentication refuses longer ones unread).
MIN_PASSWORD, MAX_PASSWORD = 8, credentials.MAX_SECRET


def _password_hash(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidArgument(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return credentials.hash_secret(password)


def _role_exists(cur: Any, role: str) -> None:
    if role not in (ADMIN, PUBLIC) and not accessdb.role_exists(cur, role):
        raise NotFound(f"role '{role}' does not exist: CREATE ROLE {role} first (SHOW ROLES lists them)")


def _must_exist(cur: Any, user: str) -> None:
    if not usersdb.user_exists(cur, user):
        raise NotFound(f"user '{user}' does not exist (SHOW USERS lists them; CREATE USER {user} creates it)")


def _self_or_admin(session: Session, user: str | None, action: str) -> str:
    """The user a statement is about (None: the session's own), if the session may act on it."""
    if user is None:
        if session.user is None:
            raise InvalidArgument(f"{action}: name the user (this session has none)")
        return session.user
    if user != session.user:
        session.checker().require_admin(f"{action} of another user")
    return user


def create_user(session: Session, cur: Any, user: str, password: str | None, default_role: str | None,
                if_not_exists: bool = False) -> str:
    session.checker().require_admin("CREATE USER")
    if usersdb.user_exists(cur, user):
        if if_not_exists:
            return f"User {user} already exists, statement succeeded."
        raise AlreadyExists(f"user '{user}' already exists (ALTER USER {user} SET ... changes it)")
    if default_role is not None:
        _role_exists(cur, default_role)
    usersdb.create_user(cur, user, None if password is None else _password_hash(password), default_role)
    return f"User {user} successfully created."


def alter_user(session: Session, cur: Any, user: str | None, password: str | None, properties: dict[str, Any],
               unset: bool = False, if_exists: bool = False) -> str:
    """SET/UNSET PASSWORD and DEFAULT_ROLE: a user's own password, or the administrator's."""
    user = _self_or_admin(session, user, "ALTER USER")
    if "DEFAULT_ROLE" in properties or unset:
        session.checker().require_admin("ALTER USER ... DEFAULT_ROLE or UNSET")
    if password is not None and session.role_restriction is not None:
        raise PermissionDenied.of("PASSWORD", role=session.role, reason="a session of an access token restricted "
                                  "to one role cannot change the password", hint="log in with the password")
    if not usersdb.user_exists(cur, user):
        if if_exists:
            return f"User {user} does not exist, statement succeeded."
        _must_exist(cur, user)
    if "DEFAULT_ROLE" in properties:
        role = properties["DEFAULT_ROLE"]
        if role is not None:
            _role_exists(cur, role)
        usersdb.set_default_role(cur, user, role)
    if password is not None:
        usersdb.set_password(cur, user, _password_hash(password))
    elif unset and "PASSWORD" in properties:
        usersdb.set_password(cur, user, None)
    return "Statement executed successfully."


def drop_user(session: Session, cur: Any, user: str, if_exists: bool = False) -> str:
    session.checker().require_admin("DROP USER")
    if user == session.user:
        raise InvalidArgument(f"user {user} is this session's own: drop it from another administrator's session")
    if not usersdb.user_exists(cur, user):
        if if_exists:
            return f"User {user} does not exist, statement succeeded."
        _must_exist(cur, user)
    usersdb.drop_user(cur, user)
    return f"{user} successfully dropped."


def show_users(session: Session, cur: Any) -> list[dict[str, Any]]:
    session.checker().require_admin("SHOW USERS")
    return usersdb.list_users(cur)


def add_token(session: Session, cur: Any, user: str | None, name: str, role: str | None,
              days: int | None) -> dict[str, Any]:
    """A new token of ``user`` (None: the session's): token_name, token_secret (the one time it is shown),
    expires_at. A restricted session's tokens are restricted to its role."""
    user = _self_or_admin(session, user, "ALTER USER ... ADD PROGRAMMATIC ACCESS TOKEN")
    restriction = session.role_restriction
    if restriction is not None:
        if role is not None and role != restriction:
            raise PermissionDenied.of("ROLE_RESTRICTION", role=session.role, reason="this session's access "
                                      f"token is restricted to role {restriction}: so are the tokens it adds")
        role = restriction
    _must_exist(cur, user)
    secret = credentials.mint_token(cur, user, name, role=role, days=days)
    expires = usersdb.token_named(cur, user, name)["expires_at"]
    return {"token_name": name, "token_secret": secret,
            "expires_at": datetime.fromtimestamp(expires / 1000, timezone.utc).replace(tzinfo=None)}


def remove_token(session: Session, cur: Any, user: str | None, name: str, if_exists: bool = False) -> str:
    user = _self_or_admin(session, user, "ALTER USER ... REMOVE PROGRAMMATIC ACCESS TOKEN")
    if not usersdb.user_exists(cur, user):
        if if_exists:
            return f"User {user} does not exist, statement succeeded."
        _must_exist(cur, user)
    if not usersdb.remove_token(cur, user, name):
        raise NotFound(f"user {user} has no programmatic access token named '{name}' (SHOW USER PROGRAMMATIC "
                       f"ACCESS TOKENS FOR USER {user} lists them)")
    return f"Programmatic access token {name} of user {user} successfully removed."


def show_tokens(session: Session, cur: Any, user: str | None) -> list[dict[str, Any]]:
    user = _self_or_admin(session, user, "SHOW USER PROGRAMMATIC ACCESS TOKENS")
    _must_exist(cur, user)
    return usersdb.list_tokens(cur, user)
