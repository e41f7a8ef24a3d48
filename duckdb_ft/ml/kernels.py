"""Faster pieces of the LoRA training step on a CPU, each exact up to rounding: attention, the loss, memory and
threads (the LoRA dropout is in :mod:`.dropout`).

- ``causal_attention``: on a CPU, for the short sequences fine-tuning rows usually are, explicit matrix products
  beat torch's fused attention kernel (about 3x forward + backward at 150 tokens in bf16), which pays off only past
  ~300 tokens without a mask; with a packed row's mask, sdpa is slower still (on the benchmark's packed rows of up
  to ~460 tokens, a training step took 10% longer when rows past 256 tokens went to sdpa). It is registered with
  transformers as the attention implementation ``duckdb_ft``: short right-padded batches take the explicit path
  (keeping only the bf16 probabilities for the backward pass, a third of what the eager implementation keeps);
  packed rows (a boolean block-diagonal causal mask) take it one example at a time, so no score is computed between
  two examples of a row (on the benchmark's packed rows, two thirds of a row's scores); anything else goes to
  ``sdpa``, unchanged.
- ``completion_cross_entropy``: the loss on completion tokens through the LM head, which keeps only the logits
  as the matrix product gave them (bf16 under autocast) for the backward pass, instead of those plus their fp32
  copy, the log-softmax and its gradient: a quarter of the memory of the plain path, and no more arithmetic.
- ``steady_allocator``: glibc's malloc keeps freed blocks of up to 32 MB in its heaps for reuse, and a training
  step's activations change size with every batch, so the heaps fragment: the same job peaked anywhere from 5.4 to
  7.7 GB resident on the benchmark, for 3.6 GB live. Blocks of 2 MB and more are mapped and unmapped instead
  (glibc's own mechanism, with its dynamic threshold pinned): PyTorch maps those in 2 MB transparent huge pages
  (``duckdb_ft.ml`` turns that on), so a fresh block costs one page fault per 2 MB instead of 512; with 4 MB and
  4 KB pages, faulting the blocks in had cost a tenth of a step.
- ``ThreadFit``: torch's threads (and the training step's lanes, ``lanes``) set to the cores other processes leave
  free, re-measured every few seconds. With more threads than free cores, every parallel operation waits for a
  descheduled thread: on a 2-core machine with one other busy process, a step took 5 to 10 times longer with 2
  threads than with 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import sys
import time
import weakref
from typing import Any, Iterator

import torch

ATTENTION = "duckdb_ft"
EXPLICIT_MAX_LENGTH = 512  # packed rows run to ~460 tokens; with their mask, sdpa was slower there (10% a step)
EXPLICIT_MAX_SCORES = 4 * 9 * 512 * 512  # probabilities kept per layer (bf16): at most about 19 MB
MMAP_THRESHOLD = 2 << 20  # bytes: larger blocks are mapped and returned to the system when freed
LOGIT_CHUNK = 1 << 24  # logits scored at once in the loss (rows x vocabulary): 64 MB in fp32


class _CausalAttention(torch.autograd.Function):
    """softmax(q kᵀ · scale + mask) v, with query heads grouped onto their key/value head; the mask is causal, or
    the boolean ``allowed`` (causal within each example of a packed row).

    Shapes: q (B, KV, R·L, D), the R query heads sharing each key/value head stacked along the rows; k, v (B, KV, L, D).
    Saves q, k, v and the probabilities (in the inputs' dtype) for the backward pass.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                allowed: torch.Tensor | None) -> torch.Tensor:
        length = k.shape[-2]
        rows = q.shape[-2]
        if allowed is None:  # plain causal
            blocked = torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)
        else:  # (B, 1, L, L), True where a query may attend: causal and inside its packed example
            blocked = allowed.logical_not()
        blocked = blocked.repeat(*([1] * (blocked.dim() - 2)), rows // length, 1)
        with torch.autocast(q.device.type, enabled=False):
            # The scores stay in the inputs' dtype: the CPU softmax accumulates a bf16 row in float32 inside, so a
            # float32 copy of the scores would only add a cast and a tensor of the scores' size.
            scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale).masked_fill_(blocked, float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            del scores
            out = torch.matmul(probs, v)
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        q, k, v, probs = ctx.saved_tensors
        with torch.autocast(q.device.type, enabled=False):
            grad = grad.to(q.dtype)
            grad_v = torch.matmul(probs.transpose(-1, -2), grad)
            grad_probs = torch.matmul(grad, v.transpose(-1, -2))
            # softmax backward, p * (dp - sum_j p_j dp_j), by torch's own kernel (float32 inside, one pass)
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype).mul_(ctx.scale)
            grad_q = torch.matmul(grad_scores, k)
            grad_k = torch.matmul(grad_scores.transpose(-1, -2), q)
        return grad_q, grad_k, grad_v, None, None


def causal_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """A transformers attention function: (B, H, L, D) query, (B, KV, L, D) key and value -> (B, L, H, D)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, heads, length, dim = query.shape
    kv = key.shape[1]
    plain = (query.device.type == "cpu" and key.shape[-2] == length and heads % kv == 0
             and (dropout == 0.0 or not module.training)
             and kwargs.get("sliding_window") is None and kwargs.get("softcap") is None)
    scale = scaling if scaling is not None else 1 / math.sqrt(dim)
    # Under autocast the rotary embedding leaves q and k in fp32 and v in bf16: compute in the autocast dtype.
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else query.dtype
    segments = _segments(attention_mask, length) if plain and attention_mask is not None else None
    if segments is not None and max(e - s for row in segments for s, e in row) <= EXPLICIT_MAX_LENGTH:
        return _per_example(query.to(dtype), key.to(dtype), value.to(dtype), segments, scale), None
    explicit = (plain and length <= EXPLICIT_MAX_LENGTH and b * heads * length * length <= EXPLICIT_MAX_SCORES
                and (attention_mask is None or _packed_mask(attention_mask, length)))
    if not explicit:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    grouped = query.to(dtype).reshape(b, kv, (heads // kv) * length, dim)
    out = _CausalAttention.apply(grouped, key.to(dtype), value.to(dtype), scale,
                                 attention_mask).reshape(b, heads, length, dim)
    return out.transpose(1, 2).contiguous(), None


def _per_example(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: list[list[tuple[int, int]]],
                 scale: float) -> torch.Tensor:
    """Causal attention inside each example of packed rows, one example at a time: (B, L, H, D).

    The whole row's scores would be L x L with most of them masked; an example's own are n x n (on the benchmark's
    packed rows, about a third as many), so the softmax, its float32 copy and the probabilities kept for backward
    shrink with them, and no tensor the size of a row's scores is allocated."""
    b, heads, length, dim = q.shape
    kv = k.shape[1]
    rows = []
    for i, row in enumerate(segments):
        parts = []
        for s, e in row:
            grouped = q[i:i + 1, :, s:e].reshape(1, kv, (heads // kv) * (e - s), dim)
            out = _CausalAttention.apply(grouped, k[i:i + 1, :, s:e], v[i:i + 1, :, s:e], scale, None)
            parts.append(out.reshape(1, heads, e - s, dim))
        rows.append(torch.cat(parts, 2) if len(parts) > 1 else parts[0])
    out = torch.cat(rows, 0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous()


_LAST_SEGMENTS: tuple[Any, Any] = (None, None)  # (weak reference to a mask, its segments): every layer gets one mask


def _segments(mask: torch.Tensor, length: int) -> list[list[tuple[int, int]]] | None:
    """The examples of packed rows, (start, end) per row, when ``mask`` is exactly block-diagonal causal (each query
    attends to every earlier position of its example and to nothing else; a row's padding continues its last
    example); None for any other mask."""
    global _LAST_SEGMENTS
    ref, found = _LAST_SEGMENTS
    if ref is not None and ref() is mask:
        return found
    found = None
    if mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[-2:] == (length, length):
        m = mask[:, 0]
        first = m.to(torch.uint8).argmax(-1)  # each query's first allowed key
        pos = torch.arange(length, device=mask.device)
        starts = torch.where(first == pos, pos, 0).cummax(-1).values  # the start of the example each query is in
        expected = (pos[None, None, :] >= starts[:, :, None]) & (pos[None, None, :] <= pos[None, :, None])
        if torch.equal(first, starts) and torch.equal(expected, m):
            found = []
            for row in (first == pos).tolist():
                begin = [j for j, is_start in enumerate(row) if is_start]
                found.append(list(zip(begin, begin[1:] + [length])))
    _LAST_SEGMENTS = (weakref.ref(mask), found)
    return found


def _packed_mask(mask: torch.Tensor, length: int) -> bool:
    """A boolean (B, 1, L, L) mask in which every query attends somewhere: what packed rows get (a left-padded
    batch's all-padding queries, which attend nowhere, are sdpa's business)."""
    return (mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[1] == 1
            and mask.shape[-2:] == (length, length) and bool(mask.any(-1).all()))


def register_attention() -> str:
    """Register ``causal_attention`` with transformers (once); returns its name for ``set_attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, causal_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)  # no mask at all for unpadded causal batches
    return ATTENTION


class _CompletionCrossEntropy(torch.autograd.Function):
    """Sum over rows of cross-entropy(hidden @ weightᵀ, targets), the LM head frozen; logits scored in chunks."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows = max(1, LOGIT_CHUNK // weight.shape[0])
        logits = torch.empty(hidden.shape[0], weight.shape[0], dtype=hidden.dtype, device=hidden.device)
        lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for i in range(0, hidden.shape[0], rows):
                chunk = torch.mm(hidden[i:i + rows], weight.t(), out=logits[i:i + rows]).float()
                lse[i:i + rows] = torch.logsumexp(chunk, dim=-1)
                total += (lse[i:i + rows] - chunk.gather(1, targets[i:i + rows, None])[:, 0]).sum()
        ctx.save_for_backward(hidden, weight, targets, logits, lse)
        ctx.rows = rows
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        hidden, weight, targets, logits, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden)
        rows = ctx.rows
        with torch.autocast(hidden.device.type, enabled=False):
            for i in range(0, hidden.shape[0], rows):
                # d loss / d logits = softmax - onehot(target)
                p = logits[i:i + rows].float().sub_(lse[i:i + rows, None]).exp_()
                p[torch.arange(p.shape[0], device=p.device), targets[i:i + rows]] -= 1.0
                torch.mm(p.mul_(grad).to(hidden.dtype), weight, out=grad_hidden[i:i + rows])
        return grad_hidden, None, None


def completion_cross_entropy(hidden: torch.Tensor, head: Any, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden)`` against ``targets`` (rows: completion positions).

    Takes the fast path for a frozen, bias-free linear head (the usual LM head, tied or not); anything else is
    computed the plain way.
    """
    import torch.nn.functional as F

    weight = getattr(head, "weight", None)
    if (not isinstance(head, torch.nn.Linear) or head.bias is not None or weight is None or weight.requires_grad
            or hidden.shape[0] == 0):
        return F.cross_entropy(head(hidden).float(), targets, reduction="sum")
    dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) \
        else hidden.dtype
    return _CompletionCrossEntropy.apply(hidden.to(dtype), weight.to(dtype), targets)


@contextlib.contextmanager
def cpu_session() -> Iterator[ThreadFit]:
    """One training run on a CPU: the steady allocator and a ``ThreadFit`` to call between steps; on exit, the
    thread count restored and the heaps' free pages returned."""
    fit = ThreadFit()
    steady_allocator()
    try:
        yield fit
    finally:
        fit.restore()
        release_free_memory()


def steady_allocator() -> bool:
    """Pin glibc's mmap threshold at ``MMAP_THRESHOLD`` (process-wide; a no-op elsewhere). True if it was set."""
    libc = _libc()
    if libc is None:
        return False
    m_mmap_threshold = -3
    return bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD))


def release_free_memory() -> None:
    """Give the heaps' free pages back to the system (glibc ``malloc_trim``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # glibc only (musl has neither)
        return libc
    except (OSError, AttributeError):
        return None


class ThreadFit:
    """Keep torch's thread count at the cores that other processes leave free (Linux; elsewhere a no-op).

    Call it between steps: every ``interval`` seconds it compares the machine's busy time (``/proc/stat``, steal
    included) with this process's own, and sets ``torch.set_num_threads`` to the machine's cores minus those
    others kept busy, at least 1 and at most the count it started with. ``restore()`` puts that count back.
    """

    def __init__(self, interval: float = 5.0):
        self.interval = interval
        self.start_threads = torch.get_num_threads()
        self.cores = os.cpu_count() or 1
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        own = os.times()
        return time.monotonic(), (sum(fields[:8]) - idle) / ticks, own.user + own.system

    def __call__(self) -> int:
        now = self._sample()
        if now is None or self._last is None or self.start_threads <= 1:
            return torch.get_num_threads()
        wall = now[0] - self._last[0]
        if wall < self.interval:
            return torch.get_num_threads()
        others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / wall  # cores busy elsewhere
        self._last = now
        threads = max(1, min(self.start_threads, int(self.cores - others + 0.25)))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads

    def restore(self) -> None:
        if torch.get_num_threads() != self.start_threads:
            torch.set_num_threads(self.start_threads)
