"""An epoch's batch plan at scale: the lazy, vectorised ``ml.data.packed_batches`` against the eager Python plan it
replaced (commit 2ddac85, copied below), on the same lengths and seed in the same process.

Lengths: ``--examples`` (default 891,000, the 1M-row benchmark's training examples) drawn log-normal and capped at
128 tokens like that benchmark's ``max_seq_length``; batch size 8. Figures: time to the first batch (the shuffle,
then packing the first chunk), the whole epoch (``list(plan)``), and the eager plan of the whole epoch (what every
job paid before its first step); the two plans are checked equal batch for batch.

    .venv/bin/python benchmarks/plan_epoch.py [--examples N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np

from duckdb_ft.ml import data


def eager(lengths: list[int], batch_size: int, seed: int) -> list[list[list[int]]]:
    """The plan as it was: every batch sorted and packed first-fit at each width, in Python, up front."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    out = []
    for start in range(0, len(order), batch_size):
        members = sorted(order[start:start + batch_size], key=lambda i: lengths[i], reverse=True)
        longest = lengths[members[0]]
        packings = (first_fit(lengths, members, w) for w in range(longest, longest + data.PACK_SLACK + 1, 8))
        out.append(min(packings, key=lambda p: (p[0], p[1]))[2])
    return out


def first_fit(lengths, members, width):
    rows, free = [], []
    for i in members:
        n = lengths[i]
        k = next((k for k, room in enumerate(free) if room >= n), None)
        if k is None:
            rows.append([i])
            free.append(width - n)
        else:
            rows[k].append(i)
            free[k] -= n
    used = max(width - room for room in free)
    return len(rows) * used, used, rows


class Lengths:
    def __init__(self, lengths):
        self.lengths = np.asarray(lengths, dtype=np.int32)

    def __len__(self):
        return len(self.lengths)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=891_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(1)
    lengths = [max(8, min(128, int(rng.lognormvariate(4.0, 0.5)))) for _ in range(args.examples)]
    store = Lengths(lengths)
    out: dict = {"examples": args.examples}
    t = time.perf_counter()
    plan = data.packed_batches(store, 8, args.seed)
    plan[0]
    out["lazy_first_batch_s"] = time.perf_counter() - t
    t = time.perf_counter()
    lazy = list(data.packed_batches(store, 8, args.seed))
    out["lazy_epoch_s"] = time.perf_counter() - t
    t = time.perf_counter()
    want = eager(lengths, 8, args.seed)
    out["eager_epoch_s"] = time.perf_counter() - t
    out["equal"] = lazy == want
    out["batches"] = len(want)
    out["eager_over_lazy_first_batch"] = out["eager_epoch_s"] / out["lazy_first_batch_s"]
    out["eager_over_lazy_epoch"] = out["eager_epoch_s"] / out["lazy_epoch_s"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
