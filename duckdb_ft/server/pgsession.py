"""One PostgreSQL wire connection's duckdb-ft session: who logged in, and its statements run as that user.

:func:`login` checks a password, or a programmatic access token sent as the password, with
``governance/credentials.py`` (one message for every failure, and its back-off). A :class:`WireSession` is then a
duckdb-ft :class:`~duckdb_ft.surface.connection.Connection` of that user (its default role, or the token's role
restriction): every statement goes through ``Connection.execute``, so the same router and authorizer as an
in-process user session decide it. Only what a PostgreSQL client asks before it sends any SQL of its user's (the
settings of :mod:`.pgcatalog`) and catalog queries (answered from the role's own view of the catalog) take
another path. Results are streamed to the wire in batches, each batch's rows encoded as they are sent.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import duckdb
import pyarrow as pa

from ..errors import AlreadyExists, AuthenticationFailed
from ..governance import credentials
from ..surface.connection import Connection
from ..surface.functions import install
from . import pgcatalog
from .pgtypes import TEXT, PgType, encode_row, pg_type

if TYPE_CHECKING:
    from ..surface.engine import Engine

#: Rows encoded and sent at a time.
BATCH_ROWS = 1024
_FIRST_WORD = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*(\w+)(?:\s+(\w+))?", re.S)
_QUERY_WORDS = {"SELECT", "WITH", "FROM", "VALUES", "TABLE", "PIVOT", "UNPIVOT", "SUMMARIZE", "DESCRIBE", "SHOW"}


#: SQLSTATE by error class, most specific first (duckdb-ft's errors are subclasses of DuckDB's).
SQLSTATES: list[tuple[type, str]] = [
    (AuthenticationFailed, "28P01"),
    (AlreadyExists, "42710"),
    (duckdb.PermissionException, "42501"),
    (duckdb.CatalogException, "42P01"),
    (duckdb.ParserException, "42601"),
    (duckdb.BinderException, "42703"),
    (duckdb.InterruptException, "57014"),
    (duckdb.InvalidInputException, "22023"),
    (duckdb.ConversionException, "22P02"),
    (duckdb.ConstraintException, "23000"),
    (duckdb.TransactionException, "25P02"),
    (duckdb.OutOfMemoryException, "53200"),
    (duckdb.NotImplementedException, "0A000"),
    (ValueError, "22023"),
    (duckdb.Error, "XX000"),
]


def sqlstate(error: BaseException) -> str:
    return next((code for cls, code in SQLSTATES if isinstance(error, cls)), "XX000")


def login(engine: Engine, user: str, secret: str, client: str = "") -> Any:
    """The Identity of ``user`` if ``secret`` is its password or one of its access tokens (``dft_...``).

    Raises:
        AuthenticationFailed: one message, whatever failed (the credentials' back-off slows repeated failures).
    """
    cur = engine.cursor()
    try:
        if secret.startswith(credentials.TOKEN_PREFIX):
            identity = credentials.authenticate_token(cur, secret, client=client)
            if identity.user != user:  # a token logs in only as its own user
                raise AuthenticationFailed()
            return identity
        return credentials.authenticate_password(cur, user, secret, client=client)
    finally:
        cur.close()


@dataclass
class Result:
    """A statement's answer: its columns (none: no rows), its rows as they come, its command tag's word."""

    columns: list[tuple[str, PgType]]
    rows: Iterator[list[bytes | None]]
    tag: str
    count: int = 0  # rows affected (INSERT/UPDATE/DELETE) or sent (SELECT)

    def command(self) -> str:
        if self.tag == "INSERT":
            return f"INSERT 0 {self.count}"
        if self.tag in ("SELECT", "UPDATE", "DELETE", "FETCH", "MOVE", "COPY"):
            return f"{self.tag} {self.count}"
        return self.tag


def command_word(sql: str) -> str:
    """The command tag PostgreSQL would give ``sql`` (its first keyword, two for CREATE/DROP/ALTER)."""
    m = _FIRST_WORD.match(sql)
    if not m:
        return ""
    first, second = m.group(1).upper(), (m.group(2) or "").upper()
    if first in ("WITH", "FROM", "VALUES", "TABLE", "PIVOT", "UNPIVOT", "SUMMARIZE", "DESCRIBE"):
        return "SELECT"
    if first in ("CREATE", "DROP", "ALTER") and second:
        return f"{first} {second}"
    if first == "START":
        return "BEGIN"
    if first == "END":
        return "COMMIT"
    return first


def table_rows(table: pa.Table, types: list[PgType]) -> Iterator[list[bytes | None]]:
    """An Arrow table's rows in text format, one batch converted at a time."""
    text = [None] * len(types)  # a column Python cannot hold (an infinite date) goes as DuckDB's text
    for batch in table.to_batches(max_chunksize=BATCH_ROWS):
        columns = []
        for i, c in enumerate(batch.columns):
            try:
                if types[i].as_text:
                    raise ValueError("sent as text")
                columns.append(c.to_pylist())
            except (OverflowError, ValueError, pa.ArrowException):
                columns.append(_as_text(c))
                text[i] = TEXT
        row_types = [t or types[i] for i, t in enumerate(text)]
        for row in zip(*columns):
            yield encode_row(row, row_types)


def _as_text(column: pa.Array) -> list:
    """A column's values as DuckDB writes them (``infinity`` for an infinite date or timestamp)."""
    relation = duckdb.connect(":memory:").from_arrow(pa.table({"c": column}))
    return [r[0] for r in relation.project('"c"::VARCHAR').fetchall()]


def duckdb_types(table: pa.Table) -> list:
    """DuckDB's types for an Arrow table's columns."""
    return list(duckdb.connect(":memory:").from_arrow(table.schema.empty_table()).types)


@dataclass
class WireSession:
    """A logged-in wire connection: its duckdb-ft Connection, and whether a statement of it is running."""

    engine: Engine
    identity: Any
    con: Connection = field(init=False)
    running: threading.Lock = field(default_factory=threading.Lock)
    failed_transaction: bool = False
    database: str = ""  # the name the client gave at start-up
    settings: dict = field(default_factory=dict)  # what the client SET (pgcatalog.SETTINGS)

    def __post_init__(self) -> None:
        raw = self.engine.cursor()  # a cursor of its own, given this user's session and nothing else
        self.con = Connection(raw, install(raw, user=self.identity.user, role=self.identity.role))

    @property
    def user(self) -> str:
        return self.identity.user

    def transaction_status(self) -> bytes:
        if self.failed_transaction:
            return b"E"
        return b"T" if self.con.session.in_transaction else b"I"

    def run(self, sql: str, params: list | None = None) -> Result:
        """Run one statement (or a script: the last statement's answer), as this session's user."""
        word = command_word(sql)
        local = pgcatalog.answer_setting(self, sql, word)
        if local is not None:
            columns, rows, tag = local
            return Result(columns, iter(rows), tag, count=len(rows))
        if pgcatalog.is_catalog_query(sql):
            table = pgcatalog.run_catalog_query(self.con.session, sql, params, self.database or self.user)
            return self._result(table, None, "SELECT")
        with self.running:
            try:
                self.con.execute(sql, params or None)
            except duckdb.Error:
                self.failed_transaction = self.con.session.in_transaction
                raise
        self.failed_transaction = False
        return self._result(self.con.to_arrow_table(), self.con.result_types, word)

    def _result(self, table: pa.Table, types: list | None, word: str) -> Result:
        if word in ("INSERT", "UPDATE", "DELETE") and table.column_names == ["Count"]:
            count = table.column(0)[0].as_py() if table.num_rows else 0
            return Result([], iter(()), word, count=int(count or 0))
        if table.num_columns == 0:
            return Result([], iter(()), word or "OK")
        pg = [pg_type(t) for t in (types if types and len(types) == table.num_columns else duckdb_types(table))]
        return Result(list(zip(table.column_names, pg)), table_rows(table, pg), "SELECT")

    def columns(self, sql: str, nparams: int) -> list[tuple[str, PgType]] | None:
        """The columns a statement would answer with, without running it (None: it answers with none)."""
        word = command_word(sql)
        local = pgcatalog.answer_setting(self, sql, word)
        if local is not None:
            return local[0] or None
        if pgcatalog.is_catalog_query(sql):
            return pgcatalog.describe_catalog_query(self.con.session, sql, nparams,
                                                   self.database or self.user)
        if word not in _QUERY_WORDS or word in ("DESCRIBE", "SHOW"):
            return None
        self.con.execute("DESCRIBE " + sql, [None] * nparams or None)
        described = self.con.fetchall()
        return [(name, pg_type(_sqltype(kind))) for name, kind, *_ in described] or None

    def cancel(self) -> None:
        """Stop the running statement (a cancel request): nothing when none runs, never the connection."""
        if self.running.locked():
            self.con.interrupt()

    def close(self) -> None:
        try:
            self.con.close()
        except duckdb.Error:
            pass


def _sqltype(name: str) -> Any:
    try:
        return duckdb.sqltype(name)
    except (duckdb.Error, ValueError, TypeError):  # a NULL parameter's type ("NULL"), a type of an extension
        return duckdb.sqltype("VARCHAR")
