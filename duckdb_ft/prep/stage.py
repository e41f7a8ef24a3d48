"""The staged snapshot: CREATE's and ESTIMATE's one copy of the rows, in a temporary table, before it is stored.

Each query runs once, into ``Stage.table`` (a TEMP table of the caller's cursor, or of ESTIMATE's scratch
database): one row per returned row, numbered from 1 in the query's order (``row``), with the split it goes to
and why it is dropped, if it is (NULL prompt or completion: ``skipped``; cleaning: see
:mod:`duckdb_ft.prep.clean`). CREATE copies the rows left into
``duckdb_ft.job_rows``; ESTIMATE reads the same table, so both see exactly the same rows, split and cleaned alike.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from ..catalog import registered
from ..errors import InvalidArgument
from ..options import TrainingOptions

#: The staged columns by FINETUNE's ``method`` (rejected: a dpo row's; label: a kto row's; NULL otherwise).
_COLUMNS = {
    "sft": "prompt::VARCHAR AS prompt, completion::VARCHAR AS completion, NULL::VARCHAR AS rejected, "
           "NULL::BOOLEAN AS label",
    "dpo": "prompt::VARCHAR AS prompt, chosen::VARCHAR AS completion, rejected::VARCHAR AS rejected, "
           "NULL::BOOLEAN AS label",
    "kto": "prompt::VARCHAR AS prompt, completion::VARCHAR AS completion, NULL::VARCHAR AS rejected, "
           "label::BOOLEAN AS label",
}
MIN_ROWS_FOR_SPLIT = 10  # fewer rows than this and no validation query: validate on the training rows
STREAM_ROWS = 65536  # rows per Arrow record batch streamed into another database


@dataclass
class Stage:
    """A staged snapshot: its temporary table and the facts CREATE records on the job."""

    table: str
    has_validation_query: bool
    validation_source: str = ""
    validation_fraction: float = 0.0
    """The share of the training query's rows held out when there is no validation query (0: every row trains)."""

    def counts(self, cur: Any) -> dict[str, int]:
        """Rows kept per split."""
        rows = cur.execute(f"SELECT split, count(*) FROM {self.table} WHERE dropped IS NULL GROUP BY split").fetchall()
        return {s: int(n) for s, n in rows}

    def skipped(self, cur: Any) -> int:
        return int(cur.execute(f"SELECT count(*) FROM {self.table} WHERE dropped = 'skipped'").fetchall()[0][0])

    def drop(self, cur: Any) -> None:
        drop_tables(cur, self.table)


def drop_tables(cur: Any, *tables: str) -> None:
    """Drop temporary tables; after a failed statement (an aborted transaction, which drops them itself on
    rollback) quietly, so the first error is the one the user sees."""
    for table in tables:
        try:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        except Exception:
            return


def stage(cur: Any, train_q: str, val_q: str | None, opts: TrainingOptions, into: Any = None) -> Stage:
    """Run the queries once into a new staged table; rows split as CREATE splits them (before cleaning).

    With no validation query, rows whose ``hash(prompt, completion) % 100`` falls under the validation fraction
    are held out: deterministic, and independent of the query's row order. The queries run on ``cur``; the table
    is a TEMP table of ``cur``, or with ``into`` (another database's connection, ESTIMATE's scratch database: see
    :mod:`duckdb_ft.prep.scratch`) a table there, the rows streamed to it in Arrow record batches.
    """
    table = f"__ft_stage_{uuid.uuid4().hex}"
    fraction = 0.0 if val_q else opts.validation_fraction
    holdout = int(round(fraction * 100))
    split = (f"CASE WHEN hash(prompt, completion) % 100 < {holdout} THEN 'validation' ELSE 'train' END"
             if holdout else "'train'")
    columns = _COLUMNS[opts.method]  # a dpo row's chosen answer is its completion
    selects = [f"""
        SELECT 'training' AS query, row, {split} AS split, prompt, completion, rejected, label,
               CASE WHEN prompt IS NULL OR completion IS NULL THEN 'skipped' END AS dropped
        FROM (SELECT row_number() OVER () AS row, {columns} FROM (\n{train_q}\n) AS q)"""]
    if val_q:
        selects.append(f"""
            SELECT 'validation', row, 'validation', prompt, completion, rejected, label,
                   CASE WHEN prompt IS NULL OR completion IS NULL THEN 'skipped' END
            FROM (SELECT row_number() OVER () AS row, {columns} FROM (\n{val_q}\n) AS q)""")
    if into is None:
        cur.execute(f"CREATE TEMP TABLE {table} AS {selects[0]}")
        for select in selects[1:]:
            cur.execute(f"INSERT INTO {table} {select}")
        return Stage(table, bool(val_q), validation_fraction=fraction)
    into.execute(f"CREATE TEMP TABLE {table} (query VARCHAR, row BIGINT, split VARCHAR, prompt VARCHAR, "
                 f"completion VARCHAR, rejected VARCHAR, label BOOLEAN, dropped VARCHAR)")
    for select in selects:
        reader = cur.sql(select).to_arrow_reader(STREAM_ROWS)
        try:
            for batch in reader:  # a failing query raises here, with DuckDB's message
                with registered(into, "__ft_staged_batch", batch):
                    into.execute(f"INSERT INTO {table} SELECT * FROM __ft_staged_batch")
        finally:
            reader.close()
    return Stage(table, bool(val_q), validation_fraction=fraction)


#: A preference row that cannot train, by method: (SQL condition on the staged row, what it says).
_BAD_ROWS = {
    "dpo": [("prompt IS NULL", "a NULL prompt"), ("completion IS NULL", "a NULL chosen"),
            ("rejected IS NULL", "a NULL rejected"),
            ("completion = rejected", "chosen equal to rejected (nothing to prefer)")],
    "kto": [("prompt IS NULL", "a NULL prompt"), ("completion IS NULL", "a NULL completion"),
            ("label IS NULL", "a NULL label")],
}


def check_preference_rows(cur: Any, st: Stage, method: str) -> None:
    """A dpo or kto snapshot must have no row that cannot train (NULLs, chosen = rejected): one error counting
    each kind of bad row, with the first rows of each, before anything is stored."""
    problems = []
    for condition, what in _BAD_ROWS.get(method, []):
        found = cur.execute(f"SELECT query, count(*), list(row ORDER BY row)[:5] FROM {st.table} "
                            f"WHERE {condition} GROUP BY query ORDER BY query DESC").fetchall()
        for query, n, rows in found:
            more = f" and {n - len(rows)} more" if n > len(rows) else ""
            problems.append(f"{n} {query} row{'s' if n > 1 else ''} with {what} "
                            f"(row{'s' if n > 1 else ''} {', '.join(map(str, rows))}{more})")
    if problems:
        raise InvalidArgument(f"the {method} rows cannot all train: " + "; ".join(problems) + ". Filter them out in "
                              "the query (e.g. WHERE chosen IS NOT NULL AND chosen <> rejected); nothing was created")


def settle_splits(cur: Any, st: Stage) -> dict[str, int]:
    """After cleaning: with too few rows to hold some out (or ``validation_fraction`` 0), every row trains (and
    validates); returns the counts. ``validation_source`` says which, in words DESCRIBE shows as
    ``validation_data``.

    Raises InvalidArgument when no training row is left.
    """
    counts = st.counts(cur)
    st.validation_source = ("validation query" if st.has_validation_query else
                            f"held-out training rows (validation_fraction {st.validation_fraction:g}; not trained on)")
    if not st.has_validation_query and (sum(counts.values()) < MIN_ROWS_FOR_SPLIT or not counts.get("validation")
                                        or not counts.get("train")):
        cur.execute(f"UPDATE {st.table} SET split = 'train' WHERE split = 'validation'")
        counts = st.counts(cur)
        st.validation_source = (f"training rows (validation_fraction {st.validation_fraction:g}: every row trains)"
                                if not round(st.validation_fraction * 100) else
                                "training rows (too few rows to hold some out)")
    if not counts.get("train"):
        kept = cur.execute(f"SELECT count(*) FILTER (dropped = 'skipped'), count(*) FILTER (dropped <> 'skipped') "
                           f"FROM {st.table} WHERE query = 'training'").fetchall()[0]
        cleaned = f", {kept[1]} dropped by cleaning (the options dedupe, drop_conflicting)" if kept[1] else ""
        raise InvalidArgument(
            f"the training query returned no row with both prompt and completion non-NULL "
            f"({kept[0]} rows skipped{cleaned}): check its WHERE clause and the NULLs in your columns")
    return counts
