"""The statements of users and their access tokens (Snowflake's syntax), parsed by :mod:`.grammar`, handled here,
each an entry of :data:`.statements.STATEMENTS`; the rules are :mod:`..governance.users`' and
:mod:`..governance.credentials`'.

``CREATE USER [IF NOT EXISTS] u [PASSWORD = '...'] [DEFAULT_ROLE = r]``, ``ALTER USER [IF EXISTS] u SET
PASSWORD = '...' | SET DEFAULT_ROLE = r | UNSET DEFAULT_ROLE``, ``DROP USER [IF EXISTS] u``, ``SHOW USERS``,
``ALTER USER u ADD PROGRAMMATIC ACCESS TOKEN t [ROLE_RESTRICTION = 'r'] [DAYS_TO_EXPIRY = n]`` (its one row holds
the token's secret, shown this once), ``ALTER USER u REMOVE PROGRAMMATIC ACCESS TOKEN t``,
``SHOW USER PROGRAMMATIC ACCESS TOKENS [FOR USER u]``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..governance import users
from .engine import Session
from .grammar import FtStatement

USER_COLUMNS = {"name": pa.string(), "default_role": pa.string(), "has_password": pa.bool_(),
                "created_on": pa.timestamp("us")}
TOKEN_COLUMNS = {"name": pa.string(), "user_name": pa.string(), "role_restriction": pa.string(),
                 "expires_at": pa.timestamp("us"), "created_on": pa.timestamp("us"), "status": pa.string()}
ADDED_COLUMNS = {"token_name": pa.string(), "token_secret": pa.string(), "expires_at": pa.timestamp("us")}


def _table(rows: list[dict[str, Any]], columns: dict[str, pa.DataType]) -> pa.Table:
    return pa.table({c: pa.array([r[c] for r in rows], t) for c, t in columns.items()})


def _status(message: str) -> pa.Table:
    return pa.table({"status": [message]})


def create_user(session: Session, st: FtStatement) -> pa.Table:
    return _status(users.create_user(session, session.engine.cursor(), st.grantee, st.password,
                                     st.properties.get("DEFAULT_ROLE"), if_not_exists=st.if_exists))


def alter_user(session: Session, st: FtStatement) -> pa.Table:
    cur = session.engine.cursor()
    if st.kind == "ALTER USER ADD TOKEN":
        row = users.add_token(session, cur, st.grantee, st.object_name, st.properties.get("ROLE_RESTRICTION"),
                              st.properties.get("DAYS_TO_EXPIRY"))
        return _table([row], ADDED_COLUMNS)
    if st.kind == "ALTER USER REMOVE TOKEN":
        return _status(users.remove_token(session, cur, st.grantee, st.object_name, if_exists=st.if_exists))
    return _status(users.alter_user(session, cur, st.grantee, st.password, st.properties,
                                    unset=st.kind == "ALTER USER UNSET", if_exists=st.if_exists))


def drop_user(session: Session, st: FtStatement) -> pa.Table:
    return _status(users.drop_user(session, session.engine.cursor(), st.grantee, if_exists=st.if_exists))


def show_users(session: Session, st: FtStatement) -> pa.Table:
    return _table(users.show_users(session, session.engine.cursor()), USER_COLUMNS)


def show_tokens(session: Session, st: FtStatement) -> pa.Table:
    return _table(users.show_tokens(session, session.engine.cursor(), st.grantee), TOKEN_COLUMNS)
