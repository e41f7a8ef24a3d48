"""Greedy decoding with continuous batching: a finished row leaves the batch and a waiting row takes its place.

``model.generate`` keeps a batch together until its longest answer ends: a row that stops after 5 tokens, or asks
for 5 (``max_tokens``), still rides along for the other rows' 500 steps. Here every decode step runs the rows still
generating; a row leaves at its first end token or its own ``max_tokens``, and waiting rows are admitted in groups
(their prompts computed together, the shared prefix from a cache computed once per call and adapter) as slots
free up. Rows with different ``max_tokens`` and, with peft, different adapters share the batch.

The cache of the running batch is one tensor pair per layer, rows left-padded to a common length with the
attention mask zero on the padding; each row's position ids count only its own tokens, so every row computes what
it would compute alone. Greedy decoding: the argmax of the last position's fp32 logits, as ``generate`` does
without logits processors (sampling stays with ``generate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from . import constrain, lora_mix, prefix

#: A group of waiting rows is admitted once this many slots are free (or nothing else is running).
ADMIT_MIN = 8
#: Leading cache columns that are padding in every running row are cut once there are this many.
TRIM_MIN = 8
#: Bytes of key/value cache one batch may hold (float32). A batch's positions are its rows times the widest row's
#: prompt and new tokens; the default model takes 46 kB a position, so 64 rows of 8,000-token prompts would need
#: some 24 GB, past a small machine's memory. A batch always takes at least one row.
MAX_CACHE_BYTES = 3 << 30


def position_budget(model: Any) -> int:
    """The positions :data:`MAX_CACHE_BYTES` holds for ``model`` (keys and values of every layer, float32)."""
    c = model.config
    c = c.get_text_config() if hasattr(c, "get_text_config") else c
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return max(1, MAX_CACHE_BYTES // (2 * c.num_hidden_layers * kv * head_dim * 4))


def fitting(candidates: Sequence[Any], budget: int, running: Sequence[Any] = ()) -> int:
    """How many of the next rows of ``candidates`` may join the ``running`` rows within ``budget`` positions
    (:func:`position_budget`): the rows, then, times the widest one's prompt plus its new tokens (``ids`` and
    ``max_new``, as every row and request has them); at least one when nothing runs."""
    width = max((len(r.ids) + r.max_new for r in running), default=0)
    n = 0
    for r in candidates:
        width = max(width, len(r.ids) + r.max_new)
        if (len(running) + n + 1) * width > budget and len(running) + n > 0:
            break
        n += 1
    return n


@dataclass
class Row:
    """One prompt to complete: token ids, the most new tokens, the adapter (None: the base model)."""

    ids: list[int]
    max_new: int
    adapter: str | None = None
    new: list[int] = field(default_factory=list)
    constraint: constrain.RowState | None = None
    """A response_format's grammar state: the row's tokens are chosen among those it allows (``constrain.py``)."""


def supported(model: Any) -> bool:
    """Whether the model's cache is plain per-layer key/value tensors (no sliding windows, no recurrent state)."""
    config = getattr(model, "config", None)
    text = config.get_text_config(decoder=True) if config is not None and hasattr(config, "get_text_config") else config
    if text is None or getattr(text, "is_encoder_decoder", False):
        return False
    if getattr(text, "sliding_window", None) not in (None, 0) and getattr(text, "use_sliding_window", True):
        return False
    types = getattr(text, "layer_types", None)
    return not types or all(t == "full_attention" for t in types)


def greedy(model: Any, rows: Sequence[Row], *, slots: int, pad: int, stop: set[int], mixed: bool) -> int:
    """Fill every row's ``new`` tokens (up to its first end token, which is kept, or ``max_new`` tokens); returns
    the length of the shared prefix computed once (0: none).

    ``mixed``: rows name their adapters and run as mixed-adapter batches (``lora_mix.py``); otherwise the caller
    has activated the one adapter (or none) that every row uses.
    """
    import contextlib

    mixer = lora_mix.Mixer(model, [r.adapter for r in rows]) if mixed else None
    with mixer if mixer is not None else contextlib.nullcontext():
        return _greedy(model, rows, slots=slots, pad=pad, stop=stop, mixer=mixer)


def _greedy(model: Any, rows: Sequence[Row], *, slots: int, pad: int, stop: set[int],
            mixer: lora_mix.Mixer | None) -> int:
    import torch
    from transformers import DynamicCache

    dev = next(model.parameters()).device
    seqs = [r.ids for r in rows]
    shared = prefix.shared_length(seqs)
    names = (lambda rs: mixer.kwargs([r.adapter for r in rs])) if mixer is not None else (lambda rs: {})
    prefix_kv: dict[str | None, list[tuple[Any, Any]]] = {}
    if shared:
        distinct = list(dict.fromkeys(r.adapter for r in rows)) if mixer is not None else [None]
        x = torch.tensor([seqs[0][:shared]] * len(distinct), device=dev)
        kw = mixer.kwargs(distinct) if mixer is not None else {}
        out = model(input_ids=x, use_cache=True, **kw)
        layers = _layers(_cache(out))
        for u, a in enumerate(distinct):
            prefix_kv[a] = [(k[u:u + 1], v[u:u + 1]) for k, v in layers]

    waiting = list(rows)
    running: list[Row] = []
    budget = position_budget(model)
    cache = None  # the running rows' DynamicCache: (rows, heads, length, dim) per layer, grown in place per step
    mask = torch.zeros((0, 0), dtype=torch.long, device=dev)
    pos = torch.zeros((0,), dtype=torch.long, device=dev)
    last = torch.zeros((0,), dtype=torch.long, device=dev)
    while waiting or running:
        free = slots - len(running)
        if waiting and free:  # within the positions budget too: long prompts run fewer at a time
            free = fitting(waiting[:free], budget, running)
        if waiting and free and (free >= ADMIT_MIN or not running or free >= len(waiting)):
            group, waiting = waiting[:free], waiting[free:]
            g_cache, g_mask, g_next = _prefill(model, group, shared, prefix_kv, pad, dev, names(group))
            live = _record(group, g_next, stop)
            if live:
                idx = torch.tensor(live, dtype=torch.long, device=dev)
                if len(live) < len(group):
                    g_cache.batch_select_indices(idx)
                if running:
                    kv, mask = _join(_layers(cache), mask, _layers(g_cache), g_mask[idx])
                    cache = DynamicCache(ddp_cache_data=kv)
                else:
                    cache, mask = g_cache, g_mask[idx]
                running += [group[k] for k in live]
                pos = torch.cat([pos, g_mask[idx].sum(-1)])
                last = torch.cat([last, g_next[idx]])
            continue
        mask = torch.cat([mask, torch.ones((len(running), 1), dtype=mask.dtype, device=dev)], dim=1)
        out = model(input_ids=last.unsqueeze(1), attention_mask=mask, position_ids=pos.unsqueeze(1), cache=cache,
                    use_cache=True, logits_to_keep=1, **names(running))
        pos = pos + 1
        last = _choose(out.logits[:, -1, :].float(), running)
        keep = _record(running, last, stop)
        if len(keep) < len(running):  # finished rows leave; columns that are padding in every row left go too
            running = [running[k] for k in keep]
            idx = torch.tensor(keep, dtype=torch.long, device=dev)
            mask, pos, last = mask[idx], pos[idx], last[idx]
            if not running:
                cache = None
                continue
            cache.batch_select_indices(idx)
            first = int(mask.any(0).nonzero()[0])
            if first >= TRIM_MIN:
                cache = DynamicCache(ddp_cache_data=[(k[:, :, first:], v[:, :, first:]) for k, v in _layers(cache)])
                mask = mask[:, first:]
    return shared


def _record(rows: Sequence[Row], tokens: Any, stop: set[int]) -> list[int]:
    """Append each row's new token; the indices of the rows that go on."""
    keep = []
    for k, (r, t) in enumerate(zip(rows, tokens.tolist())):
        r.new.append(t)
        if t not in stop and len(r.new) < r.max_new:
            keep.append(k)
    return keep


def _cache(out: Any) -> Any:
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _layers(cache: Any) -> list[tuple[Any, Any]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _prefill(model: Any, group: Sequence[Row], shared: int, prefix_kv: dict, pad: int, dev: Any,
             kw: dict) -> tuple[Any, Any, Any]:
    """The group's prompts through the model: (their cache, attention mask, first new token per row)."""
    import torch
    from transformers import DynamicCache

    ids, mask = prefix.layout([r.ids for r in group], shared, pad)
    ids, mask = ids.to(dev), mask.to(dev)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = None
    if shared:
        cache = DynamicCache(ddp_cache_data=[
            (torch.cat([prefix_kv[r.adapter if r.adapter in prefix_kv else None][i][0] for r in group]),
             torch.cat([prefix_kv[r.adapter if r.adapter in prefix_kv else None][i][1] for r in group]))
            for i in range(len(next(iter(prefix_kv.values()))))])
    else:
        cache = DynamicCache()
    out = model(input_ids=ids[:, shared:], attention_mask=mask, position_ids=position[:, shared:], cache=cache,
                use_cache=True, logits_to_keep=1, **kw)
    return _cache(out), mask, _choose(out.logits[:, -1, :].float(), group)


def _choose(logits: Any, rows: Sequence[Row]) -> Any:
    """Each row's greedy token; rows with a response format choose among the tokens their grammar allows."""
    if all(r.constraint is None for r in rows):
        return logits.argmax(-1)
    return constrain.greedy_pick(logits, [r.constraint for r in rows], [r.max_new - len(r.new) for r in rows])


def _join(kv: list, mask: Any, g_kv: list, g_mask: Any) -> tuple[list, Any]:
    """The running batch and an admitted group as one batch: the shorter side left-padded (mask zero there)."""
    import torch

    if not kv:
        return g_kv, g_mask
    a, b = mask.shape[1], g_mask.shape[1]
    width = max(a, b)

    def left(t: Any, n: int) -> Any:  # (rows, heads, length, dim) padded to length n on the left
        if t.shape[2] == n:
            return t
        return torch.cat([t.new_zeros((t.shape[0], t.shape[1], n - t.shape[2], t.shape[3])), t], dim=2)

    def left_mask(m: Any, n: int) -> Any:
        return m if m.shape[1] == n else torch.cat([m.new_zeros((m.shape[0], n - m.shape[1])), m], dim=1)

    joined = [(torch.cat([left(k, width), left(gk, width)]), torch.cat([left(v, width), left(gv, width)]))
              for (k, v), (gk, gv) in zip(kv, g_kv)]
    return joined, torch.cat([left_mask(mask, width), left_mask(g_mask, width)])
