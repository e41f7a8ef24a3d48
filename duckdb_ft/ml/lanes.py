"""A training step's micro-batches shared by the CPU's cores: one lane (a thread at one intra-op thread) per core.

On a CPU, torch's intra-op threads split each operation of a step: the large matrix products scale, but the
thousands of small element-wise passes, casts and the rank-r LoRA products of a decoder do not, and every
operation ends at a barrier. On the 2-core benchmark machine two intra-op threads ran a training step 1.0 to 1.2x as
fast as one, while two processes of one thread each both ran at about the speed of one alone (benchmarks/README.md).
So a step's micro-batches go to lanes instead: each lane computes the gradient of its micro-batches with
``torch.autograd.grad`` (torch releases the interpreter lock inside its operations, and the backward pass of the
CPU graph runs in the lane that started it), and the micro-batches' gradients are then added in micro-batch order.

Deterministic: micro-batches are assigned to lanes by a fixed rule (longest first, to the least loaded lane), their
gradients are added in micro-batch order whatever lane computed them, and every micro-batch draws its dropout masks
from its own generator (:func:`micro_batch_seed`, through ``dropout.seeded``), so a step gives the same adapter
whatever the threads' timing, and the same with one lane or several.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

_MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: spreads (seed, step, index) over the seed space


def micro_batch_seed(seed: int, step: int, index: int) -> int:
    """The dropout seed of micro-batch ``index`` of optimizer step ``step`` (0-based) of a run seeded ``seed``."""
    x = (seed * _MIX + step * 0x632BE59BD9B4E019 + index * 0x8CB92BA72F3D8DD7) % (1 << 63)
    return x ^ (x >> 29)


def assign(sizes: Sequence[int], lanes: int) -> list[list[int]]:
    """Micro-batch indices per lane, each lane's in increasing order: the largest first, each to the lane with the
    fewest positions so far (the lowest-numbered on a tie). Deterministic for the sizes."""
    load = [0] * lanes
    out: list[list[int]] = [[] for _ in range(lanes)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        lane = min(range(lanes), key=lambda k: (load[k], k))
        out[lane].append(i)
        load[lane] += sizes[i]
    return [sorted(x) for x in out if x]


class Lanes:
    """``size`` worker threads kept for a run; ``map`` runs one function per lane, in parallel, and returns the
    results in lane order. Each lane's torch runs at one intra-op thread; the caller's count is put back after."""

    def __init__(self, size: int):
        self.size = max(1, int(size))
        self._pool = ThreadPoolExecutor(self.size, thread_name_prefix="duckdb-ft-lane") if self.size > 1 else None

    def map(self, fn: Callable[[list[int]], Any], shares: list[list[int]]) -> list[Any]:
        import torch

        if self._pool is None or len(shares) <= 1:
            return [fn(share) for share in shares]
        threads = torch.get_num_threads()

        def lane(share: list[int]) -> Any:
            torch.set_num_threads(1)
            return fn(share)

        try:
            futures = [self._pool.submit(lane, share) for share in shares]
            return [f.result() for f in futures]
        finally:
            torch.set_num_threads(threads)  # torch's count is partly process-wide (MKL): the caller's again

    def step(self, micro_batch: Callable[[int], tuple[Any, int]], sizes: Sequence[int], params: list[Any],
             divisor: float, free: int, seed: tuple[int, int] | None) -> tuple[float, int]:
        """One optimizer step of ``len(sizes)`` micro-batches over at most ``free`` lanes: ``micro_batch(j)`` gives
        micro-batch j's summed loss (differentiable) and its token count. Sets each parameter's ``grad`` to the sum
        of the micro-batches' gradients of loss / ``divisor``, added in micro-batch order (the same sum for any
        number of lanes); returns (loss sum, tokens). ``seed``: (run seed, step), from which each micro-batch's
        dropout generator is seeded (None: torch's default generator)."""
        import torch

        from . import dropout

        def one(j: int) -> tuple[list[Any], float, int]:
            with dropout.seeded(None if seed is None else micro_batch_seed(seed[0], seed[1], j)):
                loss, tokens = micro_batch(j)
            grads = torch.autograd.grad(loss / divisor, params, allow_unused=True)
            return list(grads), loss.item(), tokens

        shares = assign(sizes, lane_count(free, len(sizes)))
        done = dict(pair for share in self.map(lambda share: [(j, one(j)) for j in share], shares) for pair in share)
        total: list[Any] = [None] * len(params)
        loss_sum, tokens = 0.0, 0
        for j in range(len(sizes)):
            grads, loss, n = done[j]
            loss_sum, tokens = loss_sum + loss, tokens + n
            for i, g in enumerate(grads):
                if g is not None:
                    total[i] = g if total[i] is None else total[i].add_(g)
        for p, g in zip(params, total):
            p.grad = g
        return loss_sum, tokens

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def lane_count(free_cores: int, micro_batches: int) -> int:
    """Lanes for a step: a lane per free core, no more than there are micro-batches."""
    return max(1, min(free_cores, micro_batches))

