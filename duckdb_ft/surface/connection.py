"""The connection ``duckdb_ft.connect()`` returns: DuckDB's API, with every statement routed through duckdb-ft.

``sql()`` and ``execute()`` accept duckdb-ft's own statements (GRANT, CREATE ROLE, SHOW MODELS, ...) beside
DuckDB's. For the administrator (no user) everything else is DuckDB's connection as it is. For a user session the
connection is locked down: each statement is authorized first, results come back detached from the database (a
relation over a private in-memory copy, so ``.query()`` on it cannot reach the database), and DuckDB's other
entry points (``table()``, ``read_csv()``, ``register()``, ...) are refused.
"""

from __future__ import annotations

import atexit
import functools
import weakref
from typing import Any, Callable

import duckdb
import pyarrow as pa

from ..errors import PermissionDenied, from_duckdb
from . import cursors, router
from .engine import Session, session_of, unregister
from .functions import install
from .redact import hide_ids, hide_passwords
from .statements import parse_ft_statement

#: What a user session may use of DuckDB's connection besides sql()/execute() and the fetch methods.
USER_ATTRIBUTES = {"interrupt", "description", "rowcount", "close"}


def _typed_errors(method: Callable) -> Callable:
    """DuckDB's report of an error raised inside a duckdb-ft UDF becomes that duckdb-ft error again; a user
    session's errors lose the ids they quote, and every error the passwords it quotes (:mod:`.redact`)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except duckdb.Error as e:
            ours = from_duckdb(e)
            session = getattr(args[0], "session", None) if args else None
            hidden = hide_ids(ours or e, session)  # a user's errors never carry a session's id
            hidden = hide_passwords(hidden or ours or e) or hidden  # DuckDB's parser quotes the statement
            if hidden is not None:
                raise hidden from None
            if ours is None:
                raise
            raise ours from None

    return wrapper


class Connection:
    """A DuckDB connection with a duckdb-ft session (see the module docstring)."""

    def __init__(self, raw: Any, session: Session, *, root: bool = False):
        self._raw = raw
        self.session = session
        self._root = root  # the connection connect() opened: closing it closes the database
        self._table: pa.Table | None = None  # the pending result of execute(), when not DuckDB's own
        self._offset = 0
        #: DuckDB's types of a user session's pending result from execute() (None: see ``description``).
        self.result_types: list | None = None
        self._closed = False
        if root:
            with session.engine.roots_lock:
                session.engine.roots.append(self)
            _ROOTS.add(self)

    # ------------------------------------------------------------------------------------------- statements

    @_typed_errors
    def sql(self, query: str, *, params: Any = None) -> Any:
        """Run one statement; a relation for results, None otherwise (as DuckDB's ``sql``)."""
        self._open()
        self.session.interrupted.clear()
        result = router.run(self.session, self._raw, query, params)
        if isinstance(result, pa.Table):
            return self._relation(result)
        if self.session.user is None or result is None:
            return result
        return self._relation(_arrow(result))  # detached: no path back into the database

    @_typed_errors
    def execute(self, query: str, parameters: Any = None) -> "Connection":
        """Run one statement; fetch its rows with fetchall() and friends (as DuckDB's ``execute``)."""
        self._open()
        self._table, self._offset, self.result_types = None, 0, None
        self.session.interrupted.clear()
        if self.session.is_admin and parse_ft_statement(query) is None:
            router.before_admin(self.session, self._raw, query)
            self._raw.execute(query, parameters)  # the administrator's plain SQL: DuckDB as it is
            router.forget_dropped(self.session, query)
            return self
        result = router.run(self.session, self._raw, query, parameters if parameters is not None else [])
        if isinstance(result, pa.Table):
            self._table = result
        elif self.session.user is not None:
            self._table = _arrow(result) if result is not None else pa.table({})
            self.result_types = list(result.types) if result is not None else []  # JSON, UUID: lost in Arrow
        return self

    def interrupt(self) -> None:
        """Stop the running statement (from another thread), ``finetune('WAIT', ...)`` included; the job goes on."""
        self.session.interrupted.set()
        copying = self.session.busy_cursor  # a CREATE copying rows on duckdb-ft's own cursor
        if copying is not None:
            copying.interrupt()
        self._raw.interrupt()

    def _open(self) -> None:
        if self._closed:
            raise duckdb.ConnectionException("Connection Error: Connection already closed!")

    def _relation(self, table: pa.Table) -> Any:
        return duckdb.connect(":memory:").from_arrow(table)

    # ---------------------------------------------------------------------------------------------- fetching

    @_typed_errors
    def fetchall(self) -> list[tuple]:
        if self._table is None:
            return self._raw.fetchall()
        rows = self._table.slice(self._offset).to_pylist()
        self._offset = self._table.num_rows
        return [tuple(r.values()) for r in rows]

    @_typed_errors
    def fetchone(self) -> tuple | None:
        if self._table is None:
            return self._raw.fetchone()
        if self._offset >= self._table.num_rows:
            return None
        row = self._table.slice(self._offset, 1).to_pylist()[0]
        self._offset += 1
        return tuple(row.values())

    def fetchmany(self, size: int = 1) -> list[tuple]:
        return [r for r in (self.fetchone() for _ in range(size)) if r is not None]

    @_typed_errors
    def fetchdf(self) -> Any:
        return self._raw.fetchdf() if self._table is None else self._table.slice(self._offset).to_pandas()

    df = fetchdf

    @_typed_errors
    def to_arrow_table(self) -> pa.Table:
        """The rest of the result as an Arrow table (duckdb 2.0's name; ``fetch_arrow_table`` is the 1.x one)."""
        if self._table is None:
            return self._raw.to_arrow_table()
        rest, self._offset = self._table.slice(self._offset), self._table.num_rows
        return rest

    fetch_arrow_table = arrow = to_arrow_table

    @property
    def description(self) -> Any:
        if self._table is None:
            return self._raw.description
        return [(name, str(t), None, None, None, None, None) for name, t in
                zip(self._table.column_names, self._table.schema.types)]

    # --------------------------------------------------------------------------------------------- lifetime

    def cursor(self) -> "Connection":
        """Another connection to the same database, as the same user and role."""
        raw = self._raw.cursor()  # given a session like this one's as it opens (surface/cursors.py)
        session = cursors.session_of(raw)
        if session is None or session.user != self.session.user:  # never another identity than this one's
            session = install(raw, user=self.session.user, role=self.session.role_restriction)
            session.role = self.session.role
        return Connection(raw, session)

    def close(self) -> None:
        """Close this connection (its session only). The database stays open while any connection that
        ``connect()`` opened on it in this process is open; when the last one closes, a running job is checkpointed
        and stopped first (ERROR, resumable with ``finetune('RESUME', id)``), never cut mid-write, and queued jobs
        stay for the next open."""
        if self._closed:
            return
        self._closed = True
        engine = self.session.engine
        engine.sessions.pop(self.session.id, None)
        if not self._root:
            self._raw.close()
            return
        with engine.roots_lock:
            if self in engine.roots:
                engine.roots.remove(self)
            engine.parked.append(self._raw)  # other connections' cursors (the engine's too) may derive from it
            if engine.roots:
                return
            raws, engine.parked = engine.parked, []
        unregister(engine)
        engine.jobs.stop("its database was closed")
        for raw in reversed(raws):
            raw.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def duckdb_connection(self) -> Any:
        """The underlying DuckDB connection (administrator only), for tools that need DuckDB's own object."""
        if self.session.user is not None:
            raise PermissionDenied("a user session cannot reach the raw DuckDB connection")
        return self._raw

    def __getattr__(self, name: str) -> Any:
        if self.session.user is None or name in USER_ATTRIBUTES:
            return getattr(self._raw, name)
        raise PermissionDenied(f"{name}() is not available to a user session: use sql() or execute()")

    def __repr__(self) -> str:
        who = "administrator" if self.session.user is None else f"user {self.session.user}"
        return f"<duckdb_ft.Connection {who}, role {self.session.role}>"


#: The connections connect() opened, still open or not: closed at interpreter exit (:func:`_close_at_exit`).
_ROOTS: "weakref.WeakSet[Connection]" = weakref.WeakSet()


def _close_at_exit() -> None:
    """Close what a script left open when the interpreter exits, after the wait for its jobs (threading's exit
    hooks run before atexit's): DuckDB checkpoints a database as its last connection closes, so no write-ahead log
    is left beside the file for the next tool to replay. Left open, DuckDB 2.0 leaves the log."""
    for con in list(_ROOTS):
        try:
            con.close()
        except Exception:  # noqa: BLE001 - at exit: a database that cannot be checkpointed keeps its log
            pass


atexit.register(_close_at_exit)


def _arrow(relation: Any) -> pa.Table:
    return relation.to_arrow_table()


@_typed_errors
def execute(con: Any, sql: str, params: Any = None) -> Any:
    """Run one statement on a connection with duckdb-ft installed (a :class:`Connection` or a raw DuckDB one).

    Returns a DuckDB relation (or None for statements without a result); duckdb-ft's own statements return
    their rows as a relation too. Errors of duckdb-ft's functions are raised as duckdb-ft's exceptions.
    """
    if isinstance(con, Connection):
        return con.sql(sql, params=params) if params is None else con.execute(sql, params)
    result = router.run(session_of(con), con, sql, params)
    if isinstance(result, pa.Table):
        return con.from_arrow(result)
    return result
