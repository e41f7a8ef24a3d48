"""The digest of a job's row snapshot, which a model's lineage records (:mod:`duckdb_ft.jobs.lineage`).

A snapshot's digest is SHA-256 over its rows in a stable order (split, then position), each row's split, prompt
and completion separated by control characters, so two jobs trained on the same rows, split the same way, have
the same ``snapshot_hash`` whatever their queries looked like.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

from . import SCHEMA

#: A snapshot row's columns, in the digest's order.
COLUMNS = ("split", "prompt", "completion", "rejected", "label")


def snapshot_digest(cur: Any, job_id: str, batch_rows: int = 4096) -> tuple[int, str]:
    """(rows, SHA-256 hex) of a job's snapshot, both splits, streamed in batches."""
    reader = cur.sql(f"SELECT {', '.join(COLUMNS)} FROM {SCHEMA}.job_rows WHERE job_id = ? ORDER BY split, idx",
                     params=[job_id]).to_arrow_reader(batch_rows)
    return digest_batches(reader)


def digest_batches(batches: Iterable[Any]) -> tuple[int, str]:
    """(rows, SHA-256 hex) of rows in Arrow record batches with the :data:`COLUMNS` (``rejected`` and ``label``
    may be absent: an sft snapshot), in snapshot order: what :func:`snapshot_digest` computes from the catalog, so
    a snapshot exported as a dataset can be checked against its lineage."""
    h = hashlib.sha256()
    n = 0
    for batch in batches:
        names = batch.schema.names
        cols = [batch.column(names.index(c)).to_pylist() if c in names else [None] * batch.num_rows
                for c in COLUMNS]
        for split, prompt, completion, rejected, label in zip(*cols):
            # a preference row's rejected answer or label too (an sft row's digest is as before)
            extra = "".join(f"\x1f{x}" for x in (rejected, label) if x is not None)
            h.update(f"{split}\x1f{prompt}\x1f{completion}{extra}\x1e".encode())
        n += batch.num_rows
    return n, h.hexdigest()
