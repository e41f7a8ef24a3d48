"""Duplicates in a staged snapshot, found in DuckDB SQL (parallel, spilling to disk, bounded memory).

Within each query (training, validation), over the rows with both prompt and completion:

- ``exact_duplicate``: the row repeats an earlier row's prompt and completion exactly;
- ``conflicting``: the row's prompt appears with two or more different completions (exact duplicates aside);
- ``near_duplicate``: the row's prompt differs from every earlier row's prompt but is a near duplicate of one of
  them: MinHash LSH (``NUM_PERM`` hash functions; bands and rows picked by datasketch's ``MinHashLSH`` for
  ``LSH_THRESHOLD``, below the real threshold, so that pairs at ``NEAR_THRESHOLD`` become candidates 95% of the
  time and pairs at 0.9 99.9%) over the character 5-grams of the prompt (lower-cased, runs of other characters made one space)
  proposes candidate pairs, and a candidate counts only if the exact Jaccard similarity of the two 5-gram sets is
  at least ``NEAR_THRESHOLD``.

And between the splits: ``validation_leak``: a validation row whose prompt is also a training row's prompt.
``earlier`` is by row number in the query's result. Findings go to a findings table (see :func:`findings_table`).
"""

from __future__ import annotations

import random
from typing import Any

from .stage import drop_tables

NEAR_THRESHOLD = 0.8
LSH_THRESHOLD = 0.6
NUM_PERM = 64
SHINGLE = 5
BUCKET_PEERS = 8  # a prompt is compared with at most this many earlier prompts of each LSH bucket
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
        FROM (SELECT query, row, min(row) OVER (PARTITION BY query, prompt, completion) AS first
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


def near_duplicates(cur: Any, stage: str, findings: str, threshold: float = NEAR_THRESHOLD) -> None:
    """Record near-duplicate prompts (see the module docstring)."""
    from datasketch import MinHashLSH  # band parameters for the threshold, minimising false positives and negatives

    lsh = MinHashLSH(threshold=min(threshold, LSH_THRESHOLD), num_perm=NUM_PERM)
    bands, rows = lsh.b, lsh.r
    seeds = random.Random(20240601).sample(range(1, 2**63), NUM_PERM)
    t = stage + "_near"
    cur.execute(f"""
        CREATE TEMP TABLE {t}_p AS
        SELECT query, prompt, prompt_id, first, list_distinct(list_transform(
                   range(1, greatest(length(n) - {SHINGLE - 1}, 1) + 1), lambda i: hash(substr(n, i, {SHINGLE}))))
                   AS sh
        FROM (SELECT query, prompt, {_normalized('prompt')} AS n, min(row) AS first,
                     row_number() OVER () AS prompt_id
              FROM {stage} WHERE dropped IS DISTINCT FROM 'skipped' GROUP BY query, prompt)""")
    try:
        cur.execute(f"""
            CREATE TEMP TABLE {t}_b AS
            SELECT query, prompt_id, first, b AS band,
                   hash(list_slice(sig, b * {rows} + 1, (b + 1) * {rows})) AS bucket
            FROM (SELECT query, prompt_id, first, list_transform({seeds}::UBIGINT[],
                         lambda s: list_min(list_transform(sh, lambda h: hash(xor(h, s))))) AS sig
                  FROM {t}_p), range({bands}) AS r(b)""")
        cur.execute(f"""
            CREATE TEMP TABLE {t}_r AS
            SELECT *, row_number() OVER (PARTITION BY query, band, bucket ORDER BY first) AS k FROM {t}_b""")
        cur.execute(f"CREATE TEMP TABLE {t}_n (pid BIGINT, other_first BIGINT, jaccard DOUBLE)")
        # Two rounds: against each bucket's first prompt (on templated data that settles almost every prompt at a
        # cost of one candidate per band), then, for the prompts still unsettled, its next BUCKET_PEERS - 1.
        for lo, hi, unsettled in ((1, 1, ""), (2, BUCKET_PEERS, f"AND a.prompt_id NOT IN (SELECT pid FROM {t}_n)")):
            cur.execute(f"""
                INSERT INTO {t}_n
                WITH pairs AS (
                    SELECT DISTINCT a.prompt_id AS pid, b.prompt_id AS other_pid, b.first AS other_first
                    FROM {t}_r a JOIN {t}_r b ON a.query = b.query AND a.band = b.band AND a.bucket = b.bucket
                         AND b.k < a.k AND b.k BETWEEN {lo} AND {hi} {unsettled}),
                scored AS (
                    SELECT pid, other_first, len(list_intersect(x.sh, y.sh)) AS common, len(x.sh) + len(y.sh) AS total
                    FROM pairs JOIN {t}_p x ON x.prompt_id = pairs.pid JOIN {t}_p y ON y.prompt_id = pairs.other_pid)
                SELECT pid, min(other_first), max(common / (total - common)) FROM scored
                WHERE common / (total - common) >= {threshold} GROUP BY pid""")
        cur.execute(f"""
            INSERT INTO {findings}
            WITH near AS (SELECT pid, min(other_first) AS other_first, max(jaccard) AS jaccard FROM {t}_n GROUP BY pid)
            SELECT s.query, s.row, 'near_duplicate', 'prompt', near.other_first,
                   'prompt similar to row ' || near.other_first || ' (Jaccard ' || round(near.jaccard, 2) || ')'
            FROM near JOIN {t}_p p ON p.prompt_id = near.pid
                 JOIN {stage} s ON s.query = p.query AND s.prompt = p.prompt AND s.dropped IS DISTINCT FROM 'skipped'
            WHERE NOT EXISTS (SELECT 1 FROM {stage} e WHERE e.query = s.query AND e.prompt = s.prompt
                              AND e.completion = s.completion AND e.row < s.row)""")
    finally:
        drop_tables(cur, *(f"{t}_{suffix}" for suffix in "pbrn"))
