"""The statements of users and their access tokens (Snowflake's syntax): their grammar (on :mod:`.grammar`'s
token stream) and their handlers, each an entry of :data:`.statements.STATEMENTS`; the rules are
:mod:`..governance.users`' and :mod:`..governance.credentials`'.

``CREATE USER [IF NOT EXISTS] u [PASSWORD = '...'] [DEFAULT_ROLE = r]``, ``ALTER USER [IF EXISTS] u SET
PASSWORD = '...' | SET DEFAULT_ROLE = r | UNSET DEFAULT_ROLE``, ``DROP USER [IF EXISTS] u``, ``SHOW USERS``,
``ALTER USER u ADD PROGRAMMATIC ACCESS TOKEN t [ROLE_RESTRICTION = 'r'] [DAYS_TO_EXPIRY = n]`` (its one row holds
the token's secret, shown this once), ``ALTER USER u REMOVE PROGRAMMATIC ACCESS TOKEN t``,
``SHOW USER PROGRAMMATIC ACCESS TOKENS [FOR USER u]``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..errors import InvalidArgument
from ..governance import users
from .engine import Session
from .grammar import FtStatement, Tokens

USER_COLUMNS = {"name": pa.string(), "default_role": pa.string(), "has_password": pa.bool_(),
                "created_on": pa.timestamp("us")}
TOKEN_COLUMNS = {"name": pa.string(), "user_name": pa.string(), "role_restriction": pa.string(),
                 "expires_at": pa.timestamp("us"), "created_on": pa.timestamp("us"), "status": pa.string()}
ADDED_COLUMNS = {"token_name": pa.string(), "token_secret": pa.string(), "expires_at": pa.timestamp("us")}


# ------------------------------------------------------------------------------------------------------ grammar

#: The properties of CREATE USER / ALTER USER ... SET, and of ALTER USER ... ADD PROGRAMMATIC ACCESS TOKEN: the kind
#: of value each takes.
USER_PROPERTIES = {"PASSWORD": "string", "DEFAULT_ROLE": "name"}
TOKEN_PROPERTIES = {"ROLE_RESTRICTION": "name", "DAYS_TO_EXPIRY": "number"}


def _properties(t: Tokens, allowed: dict[str, str], st: FtStatement) -> None:
    """``NAME = value ...`` (Snowflake separates them by spaces; commas are accepted): PASSWORD into
    ``st.password``, the others into ``st.properties``."""
    while not t.done():
        name = t.name().upper()
        if name not in allowed or name in st.properties or (name == "PASSWORD" and st.password is not None):
            raise InvalidArgument(f"{name} is not a property here (or is given twice); valid: {', '.join(allowed)}")
        t.expect("=")
        kind = t.toks[t.i].token_type.name if not t.done() else ""
        if allowed[name] == "string":
            if kind != "STRING":
                raise InvalidArgument(f"{name} takes a quoted string: {name} = '...'")
            st.password = t.toks[t.i].text
            t.i += 1
        elif allowed[name] == "number":
            if kind != "NUMBER" or not t.toks[t.i].text.isdigit():
                raise t.error(f"a whole number for {name}")
            st.properties[name] = int(t.toks[t.i].text)
            t.i += 1
        elif kind == "STRING":  # a role as a string literal (Snowflake's ROLE_RESTRICTION = 'VIEWER'), folded
            st.properties[name] = t.toks[t.i].text.lower()  # as an unquoted name is
            t.i += 1
        else:
            st.properties[name] = t.name()
        t.accept(",")


def parse_create_user(t: Tokens) -> FtStatement:
    """CREATE USER [IF NOT EXISTS] name [PASSWORD = '...'] [DEFAULT_ROLE = role]."""
    st = FtStatement(kind="CREATE USER", if_exists=t.accept("IF", "NOT", "EXISTS"), grantee=t.name())
    _properties(t, USER_PROPERTIES, st)
    return st


def parse_drop_user(t: Tokens) -> FtStatement:
    return FtStatement(kind="DROP USER", if_exists=t.accept("IF", "EXISTS"), grantee=t.name())


def _token_words(t: Tokens) -> bool:
    return t.accept("PROGRAMMATIC", "ACCESS", "TOKEN") or t.accept("PAT")


def parse_alter_user(t: Tokens) -> FtStatement:
    """ALTER USER [IF EXISTS] [name] {SET PASSWORD = '...' | SET DEFAULT_ROLE = r | UNSET DEFAULT_ROLE
    | ADD PROGRAMMATIC ACCESS TOKEN t [ROLE_RESTRICTION = 'r'] [DAYS_TO_EXPIRY = n]
    | REMOVE PROGRAMMATIC ACCESS TOKEN t} (PAT for PROGRAMMATIC ACCESS TOKEN; no name: the session's user)."""
    st = FtStatement(kind="ALTER USER", if_exists=t.accept("IF", "EXISTS"))
    if not (t.peek() in ("ADD", "REMOVE") and t.peek(1) in ("PROGRAMMATIC", "PAT")):
        st.grantee = t.name()
    if t.accept("SET"):
        st.kind = "ALTER USER SET"
        _properties(t, USER_PROPERTIES, st)
        if not st.properties and st.password is None:
            raise t.error(f"a property ({', '.join(USER_PROPERTIES)})")
    elif t.accept("UNSET"):
        st.kind = "ALTER USER UNSET"
        while True:
            name = t.name().upper()
            if name not in USER_PROPERTIES:
                raise InvalidArgument(f"UNSET {name}: valid properties are {', '.join(USER_PROPERTIES)}")
            st.properties[name] = None
            if not t.accept(","):
                break
    elif t.peek() in ("ADD", "REMOVE"):
        st.kind = f"ALTER USER {t.peek()} TOKEN"
        t.i += 1
        if not _token_words(t):
            raise t.error("PROGRAMMATIC ACCESS TOKEN (or PAT)")
        st.object_kind, st.object_name = "TOKEN", t.name()
        if st.kind == "ALTER USER ADD TOKEN":
            _properties(t, TOKEN_PROPERTIES, st)
    else:
        raise t.error("SET, UNSET, ADD PROGRAMMATIC ACCESS TOKEN or REMOVE PROGRAMMATIC ACCESS TOKEN")
    return st


def parse_show_tokens(t: Tokens, kind: str = "SHOW USER PROGRAMMATIC ACCESS TOKENS") -> FtStatement:
    """SHOW USER {PROGRAMMATIC ACCESS TOKENS | PATS} [FOR USER name] (after SHOW USER ...)."""
    st = FtStatement(kind=kind)
    if t.accept("FOR", "USER"):
        st.grantee = t.name()
    return st


# ----------------------------------------------------------------------------------------------------- handlers


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
