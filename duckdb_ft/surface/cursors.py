"""Every cursor of an installed connection is installed too, as the same session's user and role.

DuckDB's ``cursor()`` (and ``duplicate()``) opens a new connection to the same database instance, and a new
connection inherits nothing of its parent's: not its temporary macros (duckdb-ft's public names: ``complete``,
``finetune``, ...), not its variables (``SET VARIABLE``), not its ``search_path`` (which cannot be set globally), and
macros cannot live in the system catalog. Only the Python UDFs are instance-wide, and a UDF cannot tell which
connection calls it. So the one moment a cursor can be given its parent's session is its birth: this module wraps
``duckdb.DuckDBPyConnection.cursor`` and ``duplicate`` (once, at the first ``install()``), and a cursor of a
connection that has a duckdb-ft session gets a session of the same user, role and schema, with its macros, before
it is returned. Tools that run on cursors (dbt-duckdb runs every model on ``conn.cursor()``, threads that each take
a cursor) then need nothing of their own. A cursor of a user's connection is that user: never the administrator.

Connections are held weakly: a cursor's session leaves its engine when the cursor is garbage collected. Connections
without a session (DuckDB's own, the engine's internal cursors) pay one dictionary look-up per ``cursor()``.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable

import duckdb

if TYPE_CHECKING:
    from .engine import Session

#: The session of each installed DuckDB connection (weak keys: a connection's entry goes with it).
_sessions: weakref.WeakKeyDictionary[Any, "Session"] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_inherit: Callable[[Any, "Session"], None] | None = None


def bind(con: Any, session: "Session", *, owned: bool = False) -> None:
    """Record that ``con`` (a DuckDB connection) runs as ``session``. ``owned``: ``con`` is the only Python object
    of its connection (a cursor just opened), so the session leaves its engine with it. (Not so for any connection:
    ``duckdb.default_connection()`` gives a new object for the same connection once the last one is collected.)"""
    with _lock:
        _sessions[con] = session
    if owned:
        weakref.finalize(con, session.engine.sessions.pop, session.id, None)


def session_of(con: Any) -> "Session | None":
    """The session ``con`` runs as, or None when duckdb-ft is not installed on it."""
    with _lock:
        return _sessions.get(con)


def enable(inherit: Callable[[Any, "Session"], None]) -> None:
    """Wrap DuckDB's ``cursor()`` and ``duplicate()`` so that a cursor of a connection with a session is given a
    session like it by ``inherit(cursor, parent_session)``. Idempotent."""
    global _inherit
    with _lock:
        if _inherit is not None:
            return
        _inherit = inherit
        for name in ("cursor", "duplicate"):
            setattr(duckdb.DuckDBPyConnection, name, _inheriting(getattr(duckdb.DuckDBPyConnection, name)))


def _inheriting(open_cursor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def cursor(self: Any) -> Any:
        child = open_cursor(self)
        parent = session_of(self)
        if parent is not None and _inherit is not None:
            _inherit(child, parent)
        return child

    cursor.__doc__ = open_cursor.__doc__
    cursor.__name__ = getattr(open_cursor, "__name__", "cursor")
    return cursor
