"""An epoch's batch plan at scale: the lazy, vectorised ``ml.data.packed_batches`` against the eager Python plan it
replaced (commit 2ddac85, kept as the reference in tests/test_batch_plan.py), on the same lengths and seed in the same process.

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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_batch_plan import _eager as eager, _Store as Lengths  # noqa: E402  the one copy of the eager plan

from duckdb_ft.ml import data


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
