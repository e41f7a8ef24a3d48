"""The lazy, vectorised epoch plan (``data.packed_batches``) packs exactly the batches the first eager plan packed
(commit 2ddac85's Python loop, kept here as the reference), for several seeds, sizes and batch sizes: a resumed
job replays the same order, whichever version planned the steps before."""

import random
from typing import Sequence

import numpy as np
import pytest

from duckdb_ft.ml import data


def _eager(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[list[int]]]:
    """The eager plan as it was: shuffle, cut, sort longest first, first-fit at each width, keep the best."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    out = []
    for start in range(0, len(order), batch_size):
        members = sorted(order[start:start + batch_size], key=lambda i: lengths[i], reverse=True)
        longest = lengths[members[0]]
        packings = (_first_fit(lengths, members, w) for w in range(longest, longest + data.PACK_SLACK + 1, 8))
        out.append(min(packings, key=lambda p: (p[0], p[1]))[2])
    return out


def _first_fit(lengths, members, width):
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


class _Store:
    """Examples known only by their lengths, as ``TokenizedExamples`` offers them."""

    def __init__(self, lengths):
        self.lengths = np.asarray(lengths, dtype=np.int32)

    def __len__(self):
        return len(self.lengths)


@pytest.mark.parametrize("n,batch_size,kind", [(1, 8, "lognormal"), (7, 8, "lognormal"), (1000, 8, "lognormal"),
                                               (9001, 8, "lognormal"), (2500, 3, "ties"), (777, 16, "lognormal"),
                                               (300, 1, "ties"), (600, 32, "ties")])
def test_the_lazy_plan_packs_the_batches_of_the_eager_plan(n, batch_size, kind):
    rng = random.Random(n)
    if kind == "ties":  # many equal lengths: the longest-first order must keep ties in drawn order
        lengths = [rng.choice((1, 8, 60, 64, 128, 129, 200)) for _ in range(n)]
    else:
        lengths = [max(1, min(512, int(rng.lognormvariate(5, 0.6)))) for _ in range(n)]
    data.PackedPlan.CHUNK, chunk = 97, data.PackedPlan.CHUNK  # several chunks, one cut mid-epoch
    try:
        for seed in (0, 1, 12345):
            want = _eager(lengths, batch_size, seed)
            plan = data.packed_batches(_Store(lengths), batch_size, seed)
            assert len(plan) == len(want)
            assert list(plan) == want
            examples = [data.Example([5] * k, [5] * k) for k in lengths[:200]]  # a plain list, lengths counted
            assert list(data.packed_batches(examples, batch_size, seed)) == _eager(lengths[:200], batch_size, seed)
            # a resumed job asks from its step on, or slices a step's batches, in any order
            k = len(want) // 2
            fresh = data.packed_batches(_Store(lengths), batch_size, seed)
            assert fresh[k:k + 3] == want[k:k + 3] and fresh[-1] == want[-1] and fresh[0] == want[0]
    finally:
        data.PackedPlan.CHUNK = chunk


def test_the_plan_of_no_examples_is_empty_and_out_of_range_is_an_index_error():
    plan = data.packed_batches(_Store([]), 8, 0)
    assert len(plan) == 0 and list(plan) == []
    plan = data.packed_batches(_Store([3, 4, 5]), 2, 0)
    assert len(plan) == 2
    with pytest.raises(IndexError):
        plan[2]
