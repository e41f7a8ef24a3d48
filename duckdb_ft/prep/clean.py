"""Cleaning of a staged snapshot by CREATE's options (never of the user's tables), and the findings behind it.

:func:`analyze` records every finding of the rows (duplicates, conflicts, near duplicates, personal data) in a
findings table; :func:`apply` then drops and masks rows of the staged table as the options say, in this order:
exact duplicates (``dedupe`` "exact" or "near"), conflicting rows (``drop_conflicting``), near duplicates
(``dedupe`` "near"), then personal data (``pii`` "mask" replaces it in the rows left; "refuse" fails). A row
dropped for one reason is counted under the first. Returns what it did, as DESCRIBE reports it.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pyarrow as pa

from ..catalog import registered
from ..errors import InvalidArgument
from ..options import TrainingOptions
from . import duplicates, pii
from .stage import Stage, drop_tables

DROP_ORDER = ("exact_duplicate", "conflicting", "near_duplicate")
SHOWN_ROWS = 20  # rows listed in an error or a report line
MASK_BATCH = 8192  # rows masked a batch at a time


def analyze(cur: Any, st: Stage, *, near: bool = True, personal: bool = True) -> str:
    """A new findings table of the staged rows; its name. ``near``/``personal``: look for those too."""
    findings = f"__ft_findings_{uuid.uuid4().hex}"
    duplicates.findings_table(cur, findings)
    duplicates.exact_and_conflicting(cur, st.table, findings)
    if near:
        duplicates.near_duplicates(cur, st.table, findings)
    if personal:
        _personal_data(cur, st.table, findings)
    return findings


def _personal_data(cur: Any, stage: str, findings: str) -> None:
    """Findings of kind ``pii`` (detail: the kind of value, col: prompt or completion), one per value. The texts
    are searched a record batch at a time; what is kept of a batch's values is 11 bytes each (the row, and codes
    for the query, the column and the kind), not Python objects, so memory stays small however many there are."""
    reader = cur.sql(f"""
        SELECT (query = 'validation')::TINYINT AS v, row, prompt, completion FROM {stage}
        WHERE dropped IS DISTINCT FROM 'skipped'
          AND (regexp_matches(prompt, ?) OR regexp_matches(completion, ?))""",
                     params=[pii.SQL_PREFILTER, pii.SQL_PREFILTER]).to_arrow_reader(MASK_BATCH)
    code = {kind: i for i, kind in enumerate(pii.KINDS)}
    parts = []
    for batch in reader:
        cols = batch.to_pydict()
        found = [(v, r, c, code[kind]) for v, r, p, comp in zip(cols["v"], cols["row"], cols["prompt"],
                                                                cols["completion"])
                 for c, text in enumerate((p, comp)) for kind, _, _ in pii.find(text)]
        if found:
            v, r, c, k = zip(*found)
            parts.append(pa.table({"v": pa.array(v, pa.int8()), "row": pa.array(r, pa.int64()),
                                   "c": pa.array(c, pa.int8()), "k": pa.array(k, pa.int8())}))
    if parts:  # inserted once the reader is done (a statement on cur would end its stream)
        with registered(cur, "__ft_pii_found", pa.concat_tables(parts)):
            cur.execute(f"""INSERT INTO {findings} SELECT ['training', 'validation'][v + 1], row, 'pii',
                            ['prompt', 'completion'][c + 1], NULL, (?::VARCHAR[])[k + 1] FROM __ft_pii_found""",
                        [list(pii.KINDS)])


def _drop(cur: Any, st: Stage, findings: str, finding: str) -> None:
    cur.execute(f"""
        UPDATE {st.table} SET dropped = '{finding}'
        FROM (SELECT DISTINCT query, row FROM {findings} WHERE finding = '{finding}') f
        WHERE {st.table}.query = f.query AND {st.table}.row = f.row AND {st.table}.dropped IS NULL""")


def first_rows(cur: Any, pairs_sql: str, params: list | None = None, limit: int = SHOWN_ROWS,
               ) -> dict[str, tuple[int, list[int]]]:
    """{query: (how many distinct rows, the first ``limit`` of them)} of the (query, row) pairs a SELECT returns,
    counted in SQL: only ``limit`` row numbers a query come to Python, however many rows there are."""
    found = cur.execute(f"SELECT query, count(*), min(row, {int(limit)}) FROM (SELECT DISTINCT query, row "
                        f"FROM ({pairs_sql})) GROUP BY query", params or []).fetchall()
    return {q: (int(n), sorted(int(r) for r in rows)) for q, n, rows in found}


def rows_listed(listed: dict[str, tuple[int, list[int]]], limit: int = SHOWN_ROWS) -> str:
    """'training rows 2, 5; validation row 1' from :func:`first_rows`' answer, the first ``limit`` rows a query."""
    parts = []
    for q in ("training", "validation"):
        n, nums = listed.get(q, (0, []))
        if n:
            shown = ", ".join(map(str, nums[:limit])) + (f" and {n - limit} more" if n > limit else "")
            parts.append(f"{q} row{'s' if n > 1 else ''} {shown}")
    return "; ".join(parts)


def apply(cur: Any, st: Stage, findings: str, opts: TrainingOptions) -> dict[str, Any]:
    """Drop and mask staged rows as ``opts`` say; what was done: {dedupe, pii, drop_conflicting, dropped, masked}."""
    wanted = {"exact_duplicate": opts.dedupe in ("exact", "near"), "conflicting": opts.drop_conflicting,
              "near_duplicate": opts.dedupe == "near"}
    for finding in DROP_ORDER:
        if wanted[finding]:
            _drop(cur, st, findings, finding)
    dropped = dict(cur.execute(f"SELECT dropped, count(*) FROM {st.table} WHERE dropped IN "
                               f"({', '.join(repr(f) for f in DROP_ORDER)}) GROUP BY dropped").fetchall())
    masked: Counter = Counter()
    if opts.pii != "keep":
        keys = f"__ft_pii_rows_{uuid.uuid4().hex}"  # the kept rows with personal data, numbered in (query, row) order
        cur.execute(f"""
            CREATE TEMP TABLE {keys} AS
            SELECT row_number() OVER (ORDER BY query, row) AS n, query, row FROM {st.table} s
            WHERE s.dropped IS NULL AND EXISTS (SELECT 1 FROM {findings} f WHERE f.finding = 'pii'
                                                AND f.query = s.query AND f.row = s.row)""")
        try:
            total = int(cur.execute(f"SELECT count(*) FROM {keys}").fetchall()[0][0])
            if total and opts.pii == "refuse":
                kinds = cur.execute(f"SELECT string_agg(DISTINCT detail, ', ' ORDER BY detail) FROM {findings} "
                                    f"WHERE finding = 'pii'").fetchall()[0][0]
                raise InvalidArgument(
                    f"personal data ({kinds}) in {total} row(s), and the option pii is \"refuse\": "
                    f"{rows_listed(first_rows(cur, f'SELECT query, row FROM {keys}'))}. Remove it from the query, "
                    f"or train on it masked with {{\"pii\": \"mask\"}}; FROM finetune_data_report(...) lists "
                    f"every value")
            for lo in range(1, total + 1, MASK_BATCH):  # a batch of rows in Python at a time
                masked.update(_mask_batch(cur, st, keys, lo, lo + MASK_BATCH))
        finally:
            drop_tables(cur, keys)
    return {"dedupe": opts.dedupe, "drop_conflicting": opts.drop_conflicting, "pii": opts.pii,
            "dropped": {f: int(dropped.get(f, 0)) for f in DROP_ORDER}, "masked": dict(sorted(masked.items()))}


def _mask_batch(cur: Any, st: Stage, keys: str, lo: int, hi: int) -> Counter:
    """Mask the personal data of the rows numbered ``lo`` to ``hi - 1`` in ``keys``; the values masked by kind."""
    rows = cur.execute(f"SELECT s.query, s.row, s.prompt, s.completion FROM {keys} k JOIN {st.table} s "
                       f"USING (query, row) WHERE k.n >= ? AND k.n < ?", [lo, hi]).fetchall()
    masked: Counter = Counter()
    new: dict[str, list] = {"query": [], "row": [], "prompt": [], "completion": []}
    for q, r, p, c in rows:
        fp, fc = pii.find(p), pii.find(c)
        masked.update(k for k, _, _ in fp + fc)
        for key, value in (("query", q), ("row", r), ("prompt", pii.mask(p, fp)), ("completion", pii.mask(c, fc))):
            new[key].append(value)
    with registered(cur, "__ft_masked", pa.table(new)):
        cur.execute(f"""UPDATE {st.table} SET prompt = m.prompt, completion = m.completion
                        FROM __ft_masked m WHERE {st.table}.query = m.query AND {st.table}.row = m.row""")
    return masked


def clean(cur: Any, st: Stage, opts: TrainingOptions) -> dict[str, Any]:
    """CREATE's cleaning: find only what the options act on, apply them, drop the findings; what was done."""
    findings = analyze(cur, st, near=opts.dedupe == "near", personal=opts.pii != "keep")
    try:
        return apply(cur, st, findings, opts)
    finally:
        drop_tables(cur, findings)
