"""``sql_match``: execution match of a predicted SQL query against a reference query, in a sandbox.

A prediction's SQL (the inside of a ``` fence if there is one, up to the first semicolon) runs on a private
in-memory database with no access to files or the network, one read-only query at a time, under a time limit; a
prediction that does not parse, is not a query, fails or runs too long does not match. Results compare as
multisets of rows, or as lists when the reference has an ORDER BY. Numbers compare rounded to 2 decimals (an
average may come back as a DOUBLE or a DECIMAL); column names do not matter.

The sandbox holds copies of the tables and views the reference queries read (views as tables), so a prediction
sees what its reference sees and nothing else: it cannot write the user's database, nor read what the caller's
role may not read (the caller checks SELECT on those tables before they are copied). For a user's evaluation
(``pure_only``), SQL that calls a function off the user sessions' allow-list (:mod:`..governance.calls`:
``current_setting``, ``version``, ...) does not run and does not match, so no prediction reads what plain SQL
could not.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from decimal import Decimal
from typing import Any, Callable, Iterable

from ..catalog import registered
from ..errors import InvalidArgument
from ..governance.calls import pure_query
from ..queries import check_query

TIME_LIMIT_S = 5.0
MAX_ROWS = 10_000
_FENCE = re.compile(r"```[ \t]*(?:sql|duckdb)?[ \t]*\n?(.*?)(?:```|$)", re.S | re.I)
_ORDER_BY = re.compile(r"\border\s+by\b", re.I)


def extract_sql(text: str | None) -> str:
    """The query in a completion: the inside of a ``` fence if there is one, up to the first semicolon."""
    if not text:
        return ""
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    return text.split(";", 1)[0].strip()


def _normalize(value: Any) -> Any:
    if isinstance(value, (float, Decimal)):
        return round(float(value), 2)
    return value


class Sandbox:
    """A private in-memory DuckDB that runs predicted and reference queries; no file or network access.

    ``setup`` (a function of the sandbox's connection) fills it before access is locked down; or pass ``tables``,
    a dict from ``schema.table`` to a pyarrow table, to copy in.
    """

    def __init__(self, tables: dict[str, Any] | None = None, setup: Callable[[Any], None] | None = None,
                 pure_only: bool = False):
        import duckdb

        self.pure_only = pure_only  # a user's: SQL calling a function off the allow-list does not run

        self.con = duckdb.connect(":memory:", config={"threads": 1})
        for name, arrow in (tables or {}).items():
            schema, table = name.split(".", 1)
            self.con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            with registered(self.con, "__ft_copy", arrow):
                self.con.execute(f'CREATE TABLE "{schema}"."{table}" AS FROM __ft_copy')
        if setup is not None:
            setup(self.con)
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")
        self._expected: dict[str, list[tuple]] = {}

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def result(self, sql: str) -> list[tuple] | None:
        """The rows of one read-only query, normalized; None when it is not one, fails or runs too long."""
        try:
            sql = check_query(sql, "prediction")
        except Exception:  # FtError, or sqlglot's TokenError on an unterminated string: not a query
            return None
        if self.pure_only and not pure_query(self.con, sql):  # settings, the sandbox's catalog, ...: no match
            return None
        timer = threading.Timer(TIME_LIMIT_S, self.con.interrupt)
        timer.start()
        try:
            rows = self.con.execute(sql).fetchmany(MAX_ROWS)
        except Exception:  # duckdb.Error of any kind, or an interrupt: the prediction is wrong
            return None
        finally:
            timer.cancel()
        return [tuple(_normalize(v) for v in row) for row in rows]

    def check_references(self, references: Iterable[str], ids: Iterable[Any] | None = None) -> None:
        """Run every reference query once (its SQL as :func:`extract_sql` finds it); one that fails is the user's
        error, raised before any generation."""
        for ref, rid in zip(references, ids if ids is not None else range(1, 1 << 62)):
            if self.expected(ref) is None:
                raise InvalidArgument(
                    f"sql_match: the reference completion of row {rid} is not a query that runs on the tables it "
                    f"reads: {ref[:120]!r}. Fix the reference, or drop sql_match from the metrics")

    def expected(self, reference: str) -> list[tuple] | None:
        if reference not in self._expected:
            self._expected[reference] = self.result(extract_sql(reference))
        return self._expected[reference]

    def match(self, prediction: str | None, reference: str) -> bool:
        """Does the prediction's SQL (see :func:`extract_sql`) return what the reference returns?"""
        expected = self.expected(reference)
        if expected is None:
            return False
        got = self.result(extract_sql(prediction))
        if got is None:
            return False
        if _ORDER_BY.search(reference):
            return got == expected
        return Counter(map(repr, got)) == Counter(map(repr, expected))
