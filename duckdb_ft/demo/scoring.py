"""Execution accuracy on the shop: :mod:`duckdb_ft.evaluation.sqlmatch`'s sandbox, filled with the demo's shop.

The demo itself scores through ``finetune('EVALUATE', ..., '{"metrics": ["sql_match"]}')``, which runs the same
comparison on copies of the tables the gold queries read; this :class:`Scorer` is the same check on a private
copy of a shop built by code, for the tests and for scoring predictions made elsewhere.
"""

from __future__ import annotations

from typing import Sequence

from ..evaluation.sqlmatch import TIME_LIMIT_S, Sandbox, extract_sql
from . import dataset

__all__ = ["Scorer", "extract_sql", "TIME_LIMIT_S"]


class Scorer(Sandbox):
    """Runs gold and predicted queries against a sandboxed copy of the shop."""

    def __init__(self, shop: dataset.Shop | None = None):
        super().__init__(setup=lambda con: dataset.create_tables(con, shop))

    def correct(self, predicted: str, gold: str) -> bool:
        """Does ``predicted`` (its SQL, see :func:`extract_sql`) return what ``gold`` returns?"""
        if self.expected(gold) is None:
            raise ValueError(f"gold query fails: {gold}")
        return self.match(predicted, gold)

    def accuracy(self, predictions: Sequence[str | None], golds: Sequence[str]) -> tuple[int, list[bool]]:
        """How many completions are right, and which."""
        marks = [self.correct(p, g) for p, g in zip(predictions, golds)]
        return sum(marks), marks
