"""The LoRA dropout of a CPU training step: ``FastDropout``, and ``seeded`` for per-micro-batch masks.

peft's LoRA dropout draws one Bernoulli sample per element with torch's serial sampler (about 12% of a one-thread
training step, more with two threads, as the sampler does not parallelize); ``FastDropout`` draws 16 random bits
per element, four per 64-bit draw, and compares them with a threshold. Inside ``seeded`` (every
micro-batch of a CPU training step) the draws come from numpy's SFC64 generator, whose raw 64-bit words came
3x as fast as torch's ``random_`` (mt19937) on the benchmark machine.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

import numpy as np
import torch


class _Dropout(torch.autograd.Function):
    """x * keep * scale; keeps only the mask (``FastDropout.mask``) for the backward pass (the same product)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.ops.aten.native_dropout_backward(x, keep, scale)  # x * keep * scale, one pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (keep,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, keep, ctx.scale), None, None


class FastDropout(torch.nn.Module):
    """Dropout from bulk random bits: each element is kept when a 16-bit random lane clears a threshold.

    Four lanes come from one 64-bit draw, so the sampler runs a quarter as often as one draw per element. The drop
    probability is ``p`` rounded to a multiple of 2^-16 (0.05 becomes 0.0500031), and kept elements are scaled by
    1 / (1 - that), so the expectation is unchanged.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        dropped = round(self.p * 2 ** 16)
        self._threshold = -(2 ** 15) + dropped  # lanes are uniform int16: keep those at or above
        self._scale = 1.0 / (1.0 - dropped / 2 ** 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return _Dropout.apply(x, self.mask(x), self._scale)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """A fresh mask of ``x``'s shape and dtype: 1 where an element is kept (then scaled by ``scale``), 0 where
        it is dropped; drawn from the thread's ``seeded`` generator when there is one, else from torch's default
        generator.

        In ``x``'s dtype, not boolean: the comparison writes it directly (``out=``, one pass), and each product with
        it is then a plain same-dtype multiply. A boolean mask was cast to the input's dtype inside every product
        (three a LoRA layer: the forward's, and the backward's input and gradient): on a CPU in bf16 that cast made
        a product with a boolean mask 4x (``mul``) to 6x (``mul_``) slower than with a bf16 one."""
        n = x.numel()
        generator = getattr(_RANDOM, "generator", None)
        if generator is not None:  # a seeded block's own: numpy's SFC64, raw 64-bit words (3x torch's random_)
            bits = torch.from_numpy(generator.random_raw((n + 3) // 4).view(np.int16)).to(x.device)
        else:
            bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(
                -(2 ** 63), 2 ** 63 - 1).view(torch.int16)
        lanes = bits[:n].view(x.shape)
        return torch.ge(lanes, self._threshold, out=torch.empty(x.shape, dtype=x.dtype, device=x.device))

    @property
    def scale(self) -> float:
        return self._scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


_RANDOM = threading.local()


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Dropout masks drawn in this thread, for the block, from a generator of their own seeded ``seed`` (None: the
    default generator): a micro-batch's masks then do not depend on what other threads draw meanwhile."""
    if seed is None:
        yield
        return
    before = getattr(_RANDOM, "generator", None)
    _RANDOM.generator = np.random.SFC64(seed)
    try:
        yield
    finally:
        _RANDOM.generator = before


def fast_dropout(model: Any) -> int:
    """Swap peft's LoRA dropout modules for ``FastDropout`` in place; returns how many were swapped."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, d in list(dropouts.items()):
            if isinstance(d, torch.nn.Dropout) and d.p > 0:
                fast = FastDropout(d.p)
                fast.train(d.training)
                dropouts[name] = fast
                swapped += 1
    return swapped
