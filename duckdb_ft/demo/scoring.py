"""Execution accuracy: a predicted query is right when it returns the same result as the gold query.

Predictions run on a private in-memory copy of the shop, with no access to files or the network, one read-only
query at a time, under a time limit; a prediction that does not parse, is not a query, fails or runs too long
scores 0. Results compare as multisets of rows, or as lists when the gold query has an ORDER BY. Numbers compare
rounded to cents (an average may come back as a DOUBLE or a DECIMAL); column names do not matter.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from decimal import Decimal
from typing import Any, Sequence

from ..queries import check_query
from . import dataset

TIME_LIMIT_S = 5.0
_FENCE = re.compile(r"```[ \t]*(?:sql|duckdb)?[ \t]*\n?(.*?)(?:```|$)", re.S | re.I)


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


class Scorer:
    """Runs gold and predicted queries against a sandboxed copy of the shop."""

    def __init__(self, shop: dataset.Shop | None = None):
        import duckdb

        self.con = duckdb.connect(config={"enable_external_access": False, "threads": 1})
        dataset.create_tables(self.con, shop)
        self._gold: dict[str, Any] = {}

    def close(self) -> None:
        self.con.close()

    def result(self, sql: str) -> list[tuple] | None:
        """The rows of one read-only query, normalized; None when it is not one, fails or runs too long."""
        try:
            sql = check_query(sql, "prediction")
        except Exception:  # FtError, or sqlglot's TokenError on an unterminated string: not a query
            return None
        timer = threading.Timer(TIME_LIMIT_S, self.con.interrupt)
        timer.start()
        try:
            rows = self.con.execute(sql).fetchmany(10_000)
        except Exception:  # duckdb.Error of any kind, or an interrupt: the prediction is wrong
            return None
        finally:
            timer.cancel()
        return [tuple(_normalize(v) for v in row) for row in rows]

    def correct(self, predicted: str, gold: str) -> bool:
        """Does ``predicted`` return what ``gold`` returns?"""
        if gold not in self._gold:
            expected = self.result(gold)
            if expected is None:
                raise ValueError(f"gold query fails: {gold}")
            self._gold[gold] = expected
        expected = self._gold[gold]
        got = self.result(predicted)
        if got is None:
            return False
        if re.search(r"\border\s+by\b", gold, re.I):
            return got == expected
        return Counter(map(repr, got)) == Counter(map(repr, expected))

    def accuracy(self, predictions: Sequence[str | None], golds: Sequence[str]) -> tuple[int, list[bool]]:
        """How many completions are right (after :func:`extract_sql`), and which."""
        marks = [self.correct(extract_sql(p), g) for p, g in zip(predictions, golds)]
        return sum(marks), marks
