"""Per-database state: one :class:`Engine` per DuckDB database instance, one :class:`Session` per connection,
and the registry that finds a connection's engine.

DuckDB registers Python functions on the database instance (every connection and cursor of it sees them), while
macros are per connection. So the engine (internal cursors, catalog, job worker, model resolution) lives with
the instance, and each connection's macros carry the id of its :class:`Session` (who is calling) into the UDFs.
A cursor of an installed connection is given its own session of the same user as it opens (:mod:`.cursors`).
"""

from __future__ import annotations

import json
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any

from ..catalog import migrations, models as modeldb, objects, usage as usagedb
from ..errors import FtError, InvalidArgument, NotFound, PermissionDenied
from ..governance import roles
from ..governance.base_models import base_model_for, shown
from ..jobs.runner import JobRunner
from ..ml import models
from ..queries import parse_model_ref


class Engine:
    """What duckdb-ft keeps for one open database: a private cursor to run its own queries, and the sessions."""

    def __init__(self, con: Any, *, resume_jobs: bool = False):
        self.id = uuid.uuid4().hex
        self._root = con.cursor()
        self._lock = threading.RLock()
        self.sessions: dict[str, Session] = {}
        #: The open connections connect() made on this database, and the DuckDB connections of those closed
        #: meanwhile: closed together with the last one (the engine's own cursors may derive from any of them).
        self.roots: list = []
        self.parked: list = []
        self.roots_lock = threading.Lock()
        self.read_only = False
        try:
            migrations.migrate(self.cursor())
        except Exception as e:  # a read-only database: COMPLETE works, FINETUNE cannot record jobs
            if "read-only" not in str(e).lower() and "read only" not in str(e).lower():
                raise
            self.read_only = True
        #: Migrations a read-only database's catalog lacks: its models cannot be read by this version.
        self.outdated = migrations.pending(self.cursor()) if self.read_only else []
        self.usage = usagedb.UsageRecorder(self.cursor, writable=not self.read_only)
        self.jobs = JobRunner(self)
        if not self.read_only:
            self.jobs.recover()
            if resume_jobs:
                self.jobs.resume_stopped()

    def cursor(self) -> Any:
        """A new cursor on this database, safe to use while an outer query runs (and from other threads)."""
        with self._lock:
            return self._root.cursor()

    def session(self, session_id: str) -> "Session":
        try:
            return self.sessions[session_id]
        except KeyError:
            raise FtError(f"unknown duckdb-ft session {session_id!r}: call duckdb_ft.install(con) on this connection")

    def new_session(self, user: str | None = None, role: str | None = None) -> "Session":
        """A session as ``user`` (None: the administrator), acting as ``role`` and held to it (an access token's
        ROLE_RESTRICTION: it must be granted to the user) or, without one, as the user's default role."""
        restriction = None
        if user is not None and self.read_only:
            self._check_users_readable(user)
        if user is None:
            role = roles.ADMIN
        elif role is not None:
            if not roles.is_granted(self.cursor(), user, role):
                raise PermissionDenied(f"role '{role}' is not granted to user {user}: GRANT ROLE {role} TO USER "
                                       f"{user} first")
            restriction = role
        else:
            role = roles.default_role(self.cursor(), user)
        s = Session(engine=self, user=user, role=role, role_restriction=restriction)
        self.sessions[s.id] = s
        return s

    def _check_users_readable(self, user: str) -> None:
        """A user's session on a read-only database is held to the user's grants as on a writable one: refused
        when the catalog that holds them is missing (a file duckdb-ft never opened: no such user) or older than
        this version (its grants cannot be read safely), never opened as the administrator instead."""
        if not objects.has_catalog(self.cursor()):
            raise NotFound(f"user '{user}' does not exist: this database has no duckdb-ft users (open it without "
                           "a user, or read-write as the administrator to CREATE USER)")
        self.check_current()

    def resolve_model(self, session: "Session", name: str,
                      found: dict[str, dict | None] | None = None) -> tuple[models.LoadedModel, str | None]:
        """A model name as COMPLETE sees it: (loaded base model, LoRA adapter to activate or None).

        A fine-tuned model of the catalog wins; otherwise the name is a base model (alias, folder, hub id).
        ``found``, if given, gets ``name`` → the model version's catalog row (None: a base model).
        """
        row = self.find_model(name, session)
        if found is not None:
            found[name] = row
        if row is None:  # a base model: built-in, registered (USAGE), or any folder for the administrator
            return models.load(base_model_for(session, self.cursor(), name, models.BUILTIN)), None
        session.checker().require("USAGE", "MODEL", f"{row['schema_name']}.{row['name']}")
        loaded = models.load(row["base_model"])
        key = "ft_" + row["job_id"].replace("-", "_")  # one adapter per job: a re-created name gets new weights
        if key not in loaded.adapters:
            blob = modeldb.model_adapter(self.cursor(), row["job_id"])
            models.attach_adapter(loaded, key, json.loads(row["lora_config"]), blob)
        loaded.use_adapters([key])  # the most recently used: the last that COMPLETE's bound evicts
        return loaded, key

    def require_writable(self, to: str) -> None:
        """Raise InvalidArgument when the database is open read-only; ``to`` says what needs writing."""
        if self.read_only:
            raise InvalidArgument(f"the database is read-only: open it read-write to {to}")

    def check_current(self) -> None:
        """Raise if this read-only database's catalog predates this version of duckdb-ft (it cannot be upgraded
        read-only)."""
        if self.outdated:
            raise InvalidArgument(f"this database's duckdb-ft catalog is older than this duckdb-ft (it lacks "
                                  f"{', '.join(self.outdated)}) and it is open read-only: open it read-write once "
                                  "(duckdb_ft.connect(path)) to upgrade it, then try again")

    def find_model(self, name: str, session: "Session | None" = None) -> dict | None:
        """The catalog row of a fine-tuned model version named ``name`` (``[schema.]name[@version]``; no version:
        the model's default), or None when ``name`` is no model of the catalog (then it names a base model).

        Raises:
            NotFound: the model exists but has no such version.
        """
        if self.read_only and not objects.has_catalog(self.cursor()):
            return None
        try:
            schema, model, version = parse_model_ref(name)
        except InvalidArgument:
            return None
        cur = self.cursor()
        if self.outdated:
            if modeldb.model_exists(cur, schema, model):
                self.check_current()
            return None
        row = modeldb.list_models_named(cur, schema, model, version)
        if row is None and version is not None:
            full = f"{schema}.{model}"
            if session is not None and not session.checker().has("USAGE", "MODEL", full):
                raise PermissionDenied.of("USAGE", "MODEL", full, session.role,
                                          reason="it does not exist or USAGE is required")
            if modeldb.model_exists(cur, schema, model):
                raise NotFound(f"model '{schema}.{model}' has no version '{version}': SHOW VERSIONS IN MODEL "
                               f"{schema}.{model} lists them")
            raise NotFound(f"model '{schema}.{model}' does not exist (SHOW MODELS lists them)")
        return row


@dataclass(eq=False)
class Session:
    """One connection's identity: ``user`` None is the database administrator (embedded single-user use).

    ``role`` is the current role (``USE ROLE`` changes it); ``schema`` the schema unqualified names mean.
    """

    engine: Engine
    user: str | None = None
    role: str = "admin"
    schema: str = "main"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: Set by ``Connection.interrupt()``, cleared when a statement starts: what a blocking call (WAIT) polls, as
    #: DuckDB's own interrupt cannot stop a Python function that is running.
    interrupted: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    #: Whether the session's connection is inside a transaction it opened (BEGIN ... COMMIT/ROLLBACK), so that
    #: ownership is recorded in it; and the cursor running a CREATE's copy of rows, which interrupt() stops.
    in_transaction: bool = False
    busy_cursor: Any = field(default=None, repr=False, compare=False)
    #: The one role an access token restricted the session to (USE ROLE cannot leave it), or None.
    role_restriction: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def checker(self) -> roles.Checker:
        """The privilege checks of the current role, against the catalog as it is now."""
        return roles.Checker(self.engine.cursor(), self.role)

    def base_model(self, name: str) -> str:
        """The folder or hub id base model ``name`` stands for in this session (governance/base_models.py).

        Raises:
            PermissionDenied: the session may not name it.
        """
        return base_model_for(self, self.engine.cursor(), name, models.BUILTIN)

    def shown_base(self, recorded: str) -> str:
        """A recorded base model as this session may see it: never a registered folder's path to a user."""
        return shown(self, self.engine.cursor(), recorded, models.BUILTIN)


# ------------------------------------------------------------------------------------------------------ registry

#: The engines of the open databases by id, held weakly: an engine leaves when the last connection that connect()
#: made on its database closes (``unregister``), or, for a database only ``install()``-ed, once nothing refers
#: to it (its database closed: the UDFs that held it are gone).
_engines: weakref.WeakValueDictionary[str, Engine] = weakref.WeakValueDictionary()


def register(engine: Engine) -> None:
    """Make ``engine`` findable from its connections (through the ``__ft_engine()`` UDF it registered)."""
    _engines[engine.id] = engine


def unregister(engine: Engine) -> None:
    """Forget ``engine``: its database is closed."""
    _engines.pop(engine.id, None)


def find_engine(con: Any) -> Engine | None:
    """The engine of a connection, or None when duckdb-ft is not installed on it."""
    try:
        engine_id = con.execute("SELECT __ft_engine()").fetchall()[0][0]
    except Exception:
        return None
    return _engines.get(engine_id)


def engine_of(con: Any) -> Engine:
    """The engine of a connection on which duckdb-ft is installed."""
    engine = find_engine(con)
    if engine is None:
        raise FtError("duckdb-ft is not installed on this connection: call duckdb_ft.install(con)")
    return engine


def session_of(con: Any) -> Session:
    """The session of a raw DuckDB connection on which duckdb-ft is installed (its ``__ft_session_id()`` macro)."""
    return engine_of(con).session(con.execute("SELECT __ft_session_id()").fetchall()[0][0])
