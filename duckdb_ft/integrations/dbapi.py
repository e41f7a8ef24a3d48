"""A DB-API 2.0 connection over :class:`duckdb_ft.Connection`: every statement goes through duckdb-ft (its own
statements, GRANT or SHOW MODELS, work; a user's statements are authorized as that user), for the tools that
drive a database through DB-API (the SQLAlchemy dialect).

A failed statement never leaves the connection in an aborted transaction: DuckDB aborts an explicit transaction on
any error (later statements fail with "Current transaction is aborted"), so the connection rolls it back and, as
its caller still counts on being in a transaction, opens a new one. The error says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import duckdb

if TYPE_CHECKING:
    from ..surface.connection import Connection

ROLLED_BACK = "(duckdb-ft rolled the transaction back: the statements before it in the transaction are undone)"


class DBAPIConnection:
    """DB-API 2.0's connection over a duckdb-ft connection; ``begin()`` opens an explicit transaction.

    Only DB-API's methods: no ``df()`` as DuckDB's connection has, because tools take that as a native DuckDB
    connection and run a statement again to fetch it as a DataFrame (jupysql's ``result.DataFrame()`` would then
    run a ``finetune('CREATE', ...)`` or a COMPLETE twice); they build the DataFrame from the rows fetched instead.

    A DuckDB connection holds one pending result: before it runs another statement (COMMIT included, which
    jupysql sends right after a GRANT), the cursor whose rows are pending keeps them (:meth:`Cursor.keep`).
    """

    autocommit = None  # DuckDB has no autocommit switch: a statement outside begin() commits on its own
    closed = False

    def __init__(self, con: "Connection"):
        self.ft = con
        self.notices: list[str] = []
        self.in_transaction = False
        self._pending: Cursor | None = None  # the cursor whose result the duckdb-ft connection holds

    def cursor(self) -> "Cursor":
        return Cursor(self)

    def run(self, cursor: "Cursor | None", statement: str, parameters: Any = None) -> None:
        """Run ``statement`` for ``cursor`` (None: the connection's own), the pending result kept first."""
        if self._pending is not None and self._pending is not cursor:
            self._pending.keep()
        self._pending = cursor
        self.ft.execute(statement, parameters)

    def pending(self, cursor: "Cursor") -> bool:
        return self._pending is cursor

    def begin(self) -> None:
        self.run(None, "BEGIN TRANSACTION")
        self.in_transaction = True

    def commit(self) -> None:
        if self.in_transaction:
            self.in_transaction = False
            self.run(None, "COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.in_transaction = False
            self.run(None, "ROLLBACK")

    def close(self) -> None:
        self._pending = None
        self.ft.close()
        self.closed = True

    def recover(self, error: duckdb.Error) -> None:
        """After ``error``: roll back the transaction it aborted and open a new one (see the module docstring)."""
        if not self.in_transaction:
            return
        try:
            self.run(None, "ROLLBACK")
            self.run(None, "BEGIN TRANSACTION")
        except duckdb.Error:  # the transaction was already gone (a statement's own COMMIT/ROLLBACK failed)
            self.in_transaction = False
            return
        error.add_note(ROLLED_BACK)


class Cursor:
    """DB-API 2.0's cursor: statements run on its connection's duckdb-ft connection, whose pending result it reads
    until the connection runs another statement (then it reads the rows it kept)."""

    arraysize = 1

    def __init__(self, connection: DBAPIConnection):
        self.connection = connection
        self._kept: list[tuple] | None = None
        self._kept_description: Any = None

    def execute(self, statement: str, parameters: Sequence[Any] | dict | None = None, context: Any = None) -> None:
        self._kept, self._kept_description = None, None
        text = statement.strip().rstrip(";").strip().lower()
        if text == "commit":  # ipython-sql and jupysql send COMMIT as a statement
            self._kept = []
            return self.connection.commit()
        if text == "rollback":
            self._kept = []
            return self.connection.rollback()
        try:
            self.connection.run(self, statement, parameters if parameters else None)
        except duckdb.Error as e:
            self._kept = []
            self.connection.recover(e)
            raise

    def executemany(self, statement: str, seq_of_parameters: Iterable[Sequence[Any] | dict],
                    context: Any = None) -> None:
        for parameters in seq_of_parameters:
            self.execute(statement, parameters)

    def keep(self) -> None:
        """Fetch the rest of this cursor's result, before its connection runs another statement."""
        if self._kept is None:
            self._kept_description = self.connection.ft.description
            try:
                self._kept = self.connection.ft.fetchall()
            except duckdb.Error:  # a statement without rows
                self._kept = []

    @property
    def _live(self) -> bool:
        return self._kept is None and self.connection.pending(self)

    @property
    def description(self) -> Any:
        return self.connection.ft.description if self._live else self._kept_description

    @property
    def rowcount(self) -> int:
        if not self._live:
            return -1
        try:
            return self.connection.ft.rowcount
        except duckdb.Error:
            return -1

    def fetchone(self) -> tuple | None:
        if self._live:
            return self.connection.ft.fetchone()
        return self._kept.pop(0) if self._kept else None

    def fetchmany(self, size: int | None = None) -> list[tuple]:
        size = size or self.arraysize
        if self._live:
            return self.connection.ft.fetchmany(size)
        rows, self._kept = (self._kept or [])[:size], (self._kept or [])[size:]
        return rows

    def fetchall(self) -> list[tuple]:
        if self._live:
            return self.connection.ft.fetchall()
        rows, self._kept = self._kept or [], []
        return rows

    def close(self) -> None:
        pass  # the results belong to the connection, as DuckDB's own

    def setinputsizes(self, sizes: Any) -> None:
        pass

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        pass
