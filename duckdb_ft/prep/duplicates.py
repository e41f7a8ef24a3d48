"""Duplicates in a staged snapshot, found in DuckDB SQL (parallel, spilling to disk, bounded memory).

Within each query (training, validation), over the rows with both prompt and completion:

- ``exact_duplicate``: the row repeats an earlier row's prompt and completion exactly;
- ``conflicting``: the row's prompt appears with two or more different completions (exact duplicates aside);
- ``near_duplicate``: the row's prompt differs from every earlier row's prompt but is a near duplicate of one of
  them: MinHash LSH (``NUM_PERM`` hash functions; bands and rows picked by datasketch's ``MinHashLSH`` for
  ``LSH_THRESHOLD``, below the real threshold, so that pairs at ``NEAR_THRESHOLD`` become candidates 95% of the
  time and pairs at 0.9 99.9%) over the character 5-grams of the prompt (lower-cased, runs of other characters made one space)
  proposes candidate pairs, and a candidate counts only if the exact Jaccard similarity of the two 5-gram sets is
  at least ``NEAR_THRESHOLD``. Signatures are computed in numpy over batches of prompts (one multiply-add hash per
  5-gram and permutation); candidates and the exact Jaccard in SQL, the most likely candidate of a prompt first.

And between the splits: ``validation_leak``: a validation row whose prompt is also a training row's prompt.
``earlier`` is by row number in the query's result. Findings go to a findings table (see :func:`findings_table`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ..catalog import registered
from .stage import drop_tables

NEAR_THRESHOLD = 0.8
LSH_THRESHOLD = 0.6
NUM_PERM = 64
SHINGLE = 5
BUCKET_PEERS = 8  # a prompt is compared with at most this many earlier prompts of each LSH bucket
SIGNATURE_BATCH = 16384  # prompts per record batch of MinHash signatures
CANDIDATE_CHUNK = 524288  # prompts whose candidates are verified by one statement
NEAR_METHOD = (f"MinHash LSH ({NUM_PERM} permutations, bands for Jaccard {LSH_THRESHOLD}) over character "
               f"{SHINGLE}-grams of the normalized prompt; candidates verified by exact Jaccard >= {NEAR_THRESHOLD}")


def findings_table(cur: Any, name: str) -> None:
    """The per-row findings: (query, row, finding, col, other_row, detail); ``other_row`` is in the same query,
    except for ``validation_leak`` (a training query row)."""
    cur.execute(f"CREATE TEMP TABLE {name} (query VARCHAR, row BIGINT, finding VARCHAR, col VARCHAR, "
                f"other_row BIGINT, detail VARCHAR)")


def exact_and_conflicting(cur: Any, stage: str, findings: str) -> None:
    """Record exact duplicates and conflicting rows of the rows not skipped."""
    cur.execute(f"""
        INSERT INTO {findings}
        SELECT query, row, 'exact_duplicate', NULL, first, 'same prompt and completion as row ' || first
        FROM (SELECT query, row, min(row) OVER (PARTITION BY query, prompt, completion, rejected, label) AS first
              FROM {stage} WHERE dropped IS DISTINCT FROM 'skipped')
        WHERE row > first""")
    cur.execute(f"""
        INSERT INTO {findings}
        WITH firsts AS (  -- one row per (prompt, completion): exact duplicates aside
            SELECT query, prompt, completion, min(row) AS row FROM {stage}
            WHERE dropped IS DISTINCT FROM 'skipped' GROUP BY ALL),
        groups AS (
            SELECT query, prompt, count(*) AS n, list(row ORDER BY row) AS rows FROM firsts
            GROUP BY query, prompt HAVING count(*) > 1)
        SELECT f.query, s.row, 'conflicting', NULL, CASE WHEN f.row = g.rows[1] THEN g.rows[2] ELSE g.rows[1] END,
               g.n || ' different completions for this prompt'
        FROM groups g JOIN firsts f ON f.query = g.query AND f.prompt = g.prompt
             JOIN {stage} s ON s.query = f.query AND s.prompt = f.prompt AND s.completion = f.completion""")


def _normalized(col: str) -> str:
    return f"trim(regexp_replace(lower({col}), '[^[:alnum:]]+', ' ', 'g'))"


def _signature_buckets(cur: Any, t: str, bands: int, rows: int) -> None:
    """``{t}_b``: each prompt's LSH bucket in each band. MinHash by multiply-add hashing of the 5-gram hashes
    (``a * h + b`` mod 2**64, ``a`` odd), in numpy over Arrow record batches; a band's bucket hashes its ``rows``
    minima together (a collision only adds a candidate, which the exact Jaccard then rejects)."""
    rng = np.random.default_rng(20240601)
    perms = bands * rows
    a = rng.integers(0, 2**63, size=perms, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=perms, dtype=np.uint64)
    mix = rng.integers(0, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    cur.execute(f"CREATE TEMP TABLE {t}_b (prompt_id INTEGER, band SMALLINT, bucket UBIGINT)")
    count = cur.execute(f"SELECT count(*) FROM {t}_p").fetchall()[0][0]
    for lo in range(1, count + 1, SIGNATURE_BATCH):  # prompt_id runs 1..count; one batch in memory at a time
        batch = cur.sql(f"SELECT query = 'validation' AS v, prompt_id, sh FROM {t}_p "
                        f"WHERE prompt_id >= ? AND prompt_id < ?",
                        params=[lo, lo + SIGNATURE_BATCH]).to_arrow_table()
        sh = batch.column("sh").combine_chunks()
        flat = sh.flatten().to_numpy()
        offsets = sh.offsets.to_numpy()
        starts = (offsets[:-1] - offsets[0]).astype(np.intp)
        sig = np.empty((len(batch), perms), np.uint64)
        for k in range(perms):
            sig[:, k] = np.minimum.reduceat(flat * a[k] + b[k], starts)
        bucket = np.empty((len(batch), bands), np.uint64)
        for band in range(bands):
            h = np.zeros(len(batch), np.uint64)
            for j in range(rows):
                h = (h ^ sig[:, band * rows + j]) * mix[j]
            bucket[:, band] = h
        n = len(batch)
        idx = np.repeat(np.arange(n), bands)
        # A band number per query (validation's after training's), so that buckets never mix the two.
        band_of = (np.tile(np.arange(bands, dtype=np.int16), n)
                   + np.int16(bands) * batch.column("v").to_numpy(zero_copy_only=False).astype(np.int16)[idx])
        buckets = pa.table({"prompt_id": batch.column("prompt_id").to_numpy().astype(np.int32)[idx],
                            "band": band_of, "bucket": bucket.reshape(-1)})
        with registered(cur, "__ft_buckets", buckets):
            cur.execute(f"INSERT INTO {t}_b SELECT * FROM __ft_buckets")


def near_duplicates(cur: Any, stage: str, findings: str, threshold: float = NEAR_THRESHOLD) -> None:
    """Record near-duplicate prompts (see the module docstring)."""
    from datasketch import MinHashLSH  # band parameters for the threshold, minimising false positives and negatives

    lsh = MinHashLSH(threshold=min(threshold, LSH_THRESHOLD), num_perm=NUM_PERM)
    t = stage + "_near"
    cur.execute(f"""
        CREATE TEMP TABLE {t}_p AS
        SELECT query, row_number() OVER (ORDER BY query, first) AS prompt_id, first, list_distinct(list_transform(
                   range(1, greatest(length(n) - {SHINGLE - 1}, 1) + 1), lambda i: hash(substr(n, i, {SHINGLE}))))
                   AS sh
        FROM (SELECT query, {_normalized('prompt')} AS n, min(row) AS first
              FROM {stage} WHERE dropped IS DISTINCT FROM 'skipped' GROUP BY query, prompt)""")
    try:
        _signature_buckets(cur, t, lsh.b, lsh.r)
        cur.execute(f"CREATE TEMP TABLE {t}_n (pid BIGINT, other_first BIGINT, jaccard DOUBLE)")
        # Candidates of a prompt: first, each of its buckets' first prompt (by first row); the one sharing the most
        # buckets with it is verified first (on templated data that settles almost every prompt with one Jaccard);
        # for the prompts still unsettled, the other bucket firsts; then, for those still unsettled, each bucket's
        # next BUCKET_PEERS - 1 prompts (ranked within the buckets that hold an unsettled prompt).
        cur.execute(f"""
            CREATE TEMP TABLE {t}_c AS
            WITH firsts AS (SELECT band, bucket, min(prompt_id) AS fpid FROM {t}_b GROUP BY ALL)
            SELECT a.prompt_id AS pid, f.fpid AS other_pid, count(*) AS shared
            FROM {t}_b a JOIN firsts f USING (band, bucket) WHERE a.prompt_id <> f.fpid GROUP BY ALL""")
        best = (f"SELECT pid, other_pid FROM {t}_c WHERE pid >= $lo AND pid < $hi "
                f"QUALIFY row_number() OVER (PARTITION BY pid ORDER BY shared DESC, other_pid) = 1")
        others = (f"SELECT c.pid, c.other_pid FROM {t}_c c ANTI JOIN {t}_n n ON n.pid = c.pid "
                  f"WHERE c.pid >= $lo AND c.pid < $hi")
        peers = f"""
            WITH open AS (SELECT DISTINCT band, bucket FROM {t}_b b ANTI JOIN {t}_n n ON n.pid = b.prompt_id),
            ranked AS (SELECT b.*, row_number() OVER (PARTITION BY band, bucket ORDER BY prompt_id) AS k
                       FROM {t}_b b SEMI JOIN open USING (band, bucket))
            SELECT DISTINCT a.prompt_id AS pid, b.prompt_id AS other_pid
            FROM ranked a JOIN ranked b ON a.band = b.band AND a.bucket = b.bucket
                 AND b.k < a.k AND b.k BETWEEN 2 AND {BUCKET_PEERS}
            WHERE a.prompt_id >= $lo AND a.prompt_id < $hi
              AND NOT EXISTS (SELECT 1 FROM {t}_n n WHERE n.pid = a.prompt_id)"""
        # best and others a range of CANDIDATE_CHUNK prompts at a time (a prompt's candidates and Jaccards are its
        # own: the same rows as in one statement, in memory bounded by the range); peers in one (its buckets are
        # ranked over every unsettled prompt)
        count = cur.execute(f"SELECT count(*) FROM {t}_p").fetchall()[0][0]
        for pairs_sql, step in ((best, CANDIDATE_CHUNK), (others, CANDIDATE_CHUNK), (peers, max(count, 1))):
            for lo in range(1, count + 1, step):
                cur.execute(f"""
                    INSERT INTO {t}_n
                    WITH pairs AS ({pairs_sql}),
                    scored AS (
                        SELECT pid, y.first AS other_first, len(list_intersect(x.sh, y.sh)) AS common,
                               len(x.sh) + len(y.sh) AS total
                        FROM pairs JOIN {t}_p x ON x.prompt_id = pairs.pid
                             JOIN {t}_p y ON y.prompt_id = pairs.other_pid)
                    SELECT pid, min(other_first), max(common / (total - common)) FROM scored
                    WHERE common / (total - common) >= {threshold} GROUP BY pid""", {"lo": lo, "hi": lo + step})
        cur.execute(f"""
            INSERT INTO {findings}
            WITH near AS (SELECT pid, min(other_first) AS other_first, max(jaccard) AS jaccard FROM {t}_n GROUP BY pid)
            SELECT s.query, s.row, 'near_duplicate', 'prompt', near.other_first,
                   'prompt similar to row ' || near.other_first || ' (Jaccard ' || round(near.jaccard, 2) || ')'
            FROM near JOIN {t}_p p ON p.prompt_id = near.pid JOIN {stage} s0 ON s0.query = p.query AND s0.row = p.first
                 JOIN {stage} s ON s.query = s0.query AND s.prompt = s0.prompt AND s.dropped IS DISTINCT FROM 'skipped'
            WHERE NOT EXISTS (SELECT 1 FROM {stage} e WHERE e.query = s.query AND e.prompt = s.prompt
                              AND e.completion = s.completion AND e.row < s.row)""")
    finally:
        drop_tables(cur, *(f"{t}_{suffix}" for suffix in "pbcn"))
