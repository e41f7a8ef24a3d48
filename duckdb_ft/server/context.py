"""What every route shares: the server's :class:`State` (the database's engine and connection, the queue, the
metrics, the limits, whether it is stopping), :func:`caller` (the request's Bearer token to an identity, or 401)
and :func:`in_thread` (blocking work — generation, DuckDB, the credentials' back-off — off the event loop)."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from . import auth
from .bounds import MAX_BODY_BYTES, MAX_PROMPT_CHARS, REQUEST_TIMEOUT, Queue

if TYPE_CHECKING:
    from fastapi import Request

    from ..surface.connection import Connection
    from ..surface.engine import Engine
    from .monitoring import Metrics

T = TypeVar("T")


@dataclass
class State:
    """One server's state: its database (the administrator's root connection and its engine) and settings."""

    con: Connection
    queue: Queue
    metrics: Metrics
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_body_bytes: int = MAX_BODY_BYTES
    grace: float = 10.0
    #: Seconds a generation request may take, waiting for a slot included (504 after).
    request_timeout: float = REQUEST_TIMEOUT
    #: When the server started stopping (monotonic seconds), None while it serves: streams are cut at
    #: ``stopping + grace``.
    stopping: float | None = None
    #: The SQL API's statements running now, by handle: (user, connection), for a cancel.
    running: dict[str, tuple[str, Any]] = field(default_factory=dict)
    #: The decode loops (``ml/batcher.py``) this server's requests used, for their metrics (held weakly: a loop goes
    #: with its model).
    loops: weakref.WeakSet = field(default_factory=weakref.WeakSet)

    @property
    def engine(self) -> Engine:
        return self.con.session.engine

    def cut_at(self) -> float | None:
        """When in-flight streams are cut (monotonic seconds), or None while the server serves."""
        return None if self.stopping is None else self.stopping + self.grace

    def stop(self) -> None:
        """Begin stopping: new generation requests get 503, streams end by the grace deadline."""
        if self.stopping is None:
            self.stopping = time.monotonic()
        self.queue.closing = True


def state_of(request: Request) -> State:
    return request.app.state.ft


async def caller(request: Request) -> Any:
    """The identity (user, role) of the request's Bearer token, remembered for the access log.

    Raises:
        auth.Unauthenticated: 401.
    """
    state = state_of(request)
    client = request.client.host if request.client else ""
    identity = await in_thread(lambda: auth.identify(state.engine, request.headers.get("authorization"), client))
    request.scope.setdefault("state", {})["user"] = identity.user
    return identity


async def in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a daemon thread of its own and await its result: a stopping server never waits at exit for
    work it has given up on (a generation cut by the grace deadline finishes, or not, on its own)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def work() -> None:
        try:
            value, ok = fn(), True
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            value, ok = e, False
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:  # the loop is closed: the server stopped meanwhile
            pass

    threading.Thread(target=work, name="duckdb-ft-request", daemon=True).start()
    return await future
