"""Per-database state: one :class:`Engine` per DuckDB database instance, one :class:`Session` per connection.

DuckDB registers Python functions on the database instance (every connection and cursor of it sees them), while
macros are per connection. So the engine (internal cursors, catalog, job worker, model resolution) lives with
the instance, and each connection's macros carry the id of its :class:`Session` (who is calling) into the UDFs.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import models
from .errors import FtError


class Engine:
    """What duckdb-ft keeps for one open database: a private cursor to run its own queries, and the sessions."""

    def __init__(self, con: Any):
        self.id = uuid.uuid4().hex
        self._root = con.cursor()
        self._lock = threading.RLock()
        self.sessions: dict[str, Session] = {}

    def cursor(self) -> Any:
        """A new cursor on this database, safe to use while an outer query runs (and from other threads)."""
        with self._lock:
            return self._root.cursor()

    def session(self, session_id: str) -> "Session":
        try:
            return self.sessions[session_id]
        except KeyError:
            raise FtError(f"unknown duckdb-ft session {session_id!r}: call duckdb_ft.install(con) on this connection")

    def new_session(self, user: str | None = None) -> "Session":
        s = Session(engine=self, user=user)
        self.sessions[s.id] = s
        return s

    def resolve_model(self, session: "Session", name: str) -> tuple[models.LoadedModel, str | None]:
        """A model name as COMPLETE sees it: (loaded base model, LoRA adapter to activate or None)."""
        return models.load(name), None


@dataclass(eq=False)
class Session:
    """One connection's identity: ``user`` None is the database administrator (embedded single-user use)."""

    engine: Engine
    user: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
