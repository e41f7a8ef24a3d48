"""A request's ``Authorization: Bearer <token>`` to a Session of the token's user, with the token's role
restriction applied: the one place the server meets authentication (``governance/credentials.py`` checks the
token, with its back-off and its one message for every failure). Nothing here decides a privilege: the Session
goes through the same surface and authorizer as SQL.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import AuthenticationFailed
from ..surface.connection import Connection
from ..surface.functions import install

if TYPE_CHECKING:
    from ..surface.engine import Engine, Session

#: What a request without a Bearer token is told (a bad, expired or removed token gets credentials' one message).
MISSING = "Missing bearer token: send the header 'Authorization: Bearer <token>' (duckdb-ft token DB mints one)."


class Unauthenticated(Exception):
    """No valid token: HTTP 401, with one message for every cause."""


def identify(engine: Engine, header: str | None, client: str = "") -> Any:
    """The Identity (``user``, ``role``) of an ``Authorization`` header's Bearer token.

    Blocking (the credentials' back-off sleeps): call it from a worker thread.

    Raises:
        Unauthenticated: no Bearer token, or one that is unknown, expired or removed.
    """
    scheme, _, secret = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthenticated(MISSING)
    from ..governance import credentials

    try:
        return credentials.authenticate_token(engine.cursor(), secret.strip(), client=client)
    except AuthenticationFailed as e:  # one message for an unknown user, a wrong secret, an expired token
        raise Unauthenticated(str(e)) from None


@contextlib.contextmanager
def session(engine: Engine, identity: Any) -> Iterator[Session]:
    """A Session of ``identity``'s user and role for one request (no DuckDB connection: the /v1 API), forgotten
    after it."""
    s = engine.new_session(identity.user, role=identity.role)
    try:
        yield s
    finally:
        engine.sessions.pop(s.id, None)


@contextlib.contextmanager
def connection(engine: Engine, identity: Any) -> Iterator[Connection]:
    """A duckdb-ft Connection (a new cursor of the server's database) as ``identity``'s user and role, for one
    request's SQL: locked down and authorized exactly as ``duckdb_ft.connect(path, user=...)``'s; closed after."""
    raw = engine.cursor()  # a cursor without a session of its own: it gets the user's, and nothing else
    con = Connection(raw, install(raw, user=identity.user, role=identity.role))
    try:
        yield con
    finally:
        con.close()
