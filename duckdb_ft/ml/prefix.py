"""Shared-prefix key/value caching for a batch of prompts.

Tables of prompts are built from templates: after the chat template, the rows of a batch usually start with the
same tokens (the default system message, a schema, an instruction). The longest common token prefix of a batch is
run through the model once (once per distinct adapter in the batch: a LoRA on the attention projections changes
the keys and values), its key/value cache is copied to every row, and only each row's own suffix and the new
tokens are computed.

A batch's input is laid out ``[prefix][left padding][suffix]``: the prefix columns are already in the cache, the
attention mask is zero on the padding, and generation takes the position ids from the mask's running sum, so
every real token sits at the position it would have without padding, and no row attends to a pad. Greedy outputs
equal the uncached path (tests/test_complete.py checks that token for token).
"""

from __future__ import annotations

from typing import Any, Sequence

from .lora_mix import Mixer

#: A shorter common prefix is not worth a separate forward pass.
MIN_PREFIX_TOKENS = 8


def shared_length(seqs: Sequence[Sequence[int]]) -> int:
    """The longest common prefix of ``seqs``, leaving every row at least one token of its own.

    The last prompt token must be run with the rest of the batch: its logits give the first new token. Returns 0
    for fewer than two rows or a prefix shorter than ``MIN_PREFIX_TOKENS``.
    """
    if len(seqs) < 2:
        return 0
    limit = min(len(s) for s in seqs) - 1
    first = seqs[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in seqs):
        n += 1
    return n if n >= MIN_PREFIX_TOKENS else 0


def layout(seqs: Sequence[Sequence[int]], prefix: int, pad: int) -> tuple[Any, Any]:
    """Input ids and attention mask ``[prefix][left padding][suffix]``, each row's tokens after ``prefix``
    right-aligned (plain left padding when ``prefix`` is 0)."""
    import torch

    suffix = max(len(s) for s in seqs) - prefix
    width = prefix + suffix
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for k, s in enumerate(seqs):
        if prefix:
            ids[k, :prefix] = torch.tensor(s[:prefix])
            mask[k, :prefix] = 1
        tail = len(s) - prefix
        ids[k, width - tail:] = torch.tensor(s[prefix:])
        mask[k, width - tail:] = 1
    return ids, mask


def prefix_cache(model: Any, prefix_ids: Sequence[int], rows: int, adapter_names: Sequence[str] | None,
                 mixer: Mixer | None = None) -> tuple[str, Any]:
    """The key/value cache of ``prefix_ids`` for ``rows`` rows: (generate's keyword for it, the cache).

    With ``adapter_names`` (one per row, peft's mixed-adapter batch), the prefix runs once per distinct adapter
    and each row gets its adapter's cache (through ``mixer``, a ``lora_mix.Mixer`` of the batch, when given);
    without, it runs once under whatever adapter is active.
    """
    import torch

    dev = next(model.parameters()).device
    if adapter_names is None:
        out = model(input_ids=torch.tensor([list(prefix_ids)], device=dev), use_cache=True)
        pick = None
    else:
        distinct = list(dict.fromkeys(adapter_names))
        x = torch.tensor([list(prefix_ids)] * len(distinct), device=dev)
        kw = mixer.kwargs(distinct) if mixer is not None else {"adapter_names": distinct}
        out = model(input_ids=x, use_cache=True, **kw)
        pick = torch.tensor([distinct.index(a) for a in adapter_names], device=dev)
    # transformers 5.x names the cache ``cache``; older releases ``past_key_values``.
    key = "cache" if getattr(out, "cache", None) is not None else "past_key_values"
    cache = getattr(out, key)
    if pick is None:
        cache.batch_repeat_interleave(rows)
    else:
        cache.batch_select_indices(pick)
    return key, cache


class Store:
    """Prompt prefixes kept across batches, for a decode loop whose rows arrive over time (``batcher.py``).

    After a group of prompts is computed, the key/value cache of each adapter's longest prompt is kept (its real
    tokens, padding left out); a later group whose prompts start with the same tokens (a system message, a
    template, an earlier turn of the conversation) takes that cache, cut to the common length, and computes only
    its own tokens. A group of several prompts that no kept entry covers has its common prefix computed once, as
    ``prefix_cache`` does within one batch. Bounded: the ``max_entries`` entries used last, at most ``max_tokens``
    tokens in all. Entries are kept per options key (a bfloat16 cache is not a float32 one) and adapter.
    """

    def __init__(self, max_entries: int = 8, max_tokens: int = 8192):
        from collections import OrderedDict

        self.max_entries, self.max_tokens = max_entries, max_tokens
        self.entries: OrderedDict[tuple, list[tuple[Any, Any]]] = OrderedDict()  # (key, adapter, ids) -> kv
        self.hits = 0

    def lookup(self, model: Any, key: tuple, ids: Sequence[Sequence[int]], adapters: Sequence[str | None],
               kwargs: Any) -> tuple[int, dict[str | None, list[tuple[Any, Any]]]]:
        """(shared length, each adapter's cache of that length, batch dimension 1) for a group of prompts ``ids``
        of ``adapters``; (0, {}) when they share no prefix worth it. ``kwargs(names)`` gives the model's keyword
        arguments for a forward whose rows use adapters ``names`` (a prefix computed here)."""
        import torch

        limit = min(len(s) for s in ids) - 1
        first, common = ids[0], limit
        for s in ids[1:]:
            common = min(common, _common(first, s, common))
        distinct = list(dict.fromkeys(adapters))
        best: dict[str | None, tuple[int, tuple]] = {}
        for entry in self.entries:
            k, a, tokens = entry
            if k == key and a in distinct:
                n = _common(first, tokens, common)
                if n > best.get(a, (0, None))[0]:
                    best[a] = (n, entry)
        shared = min((best.get(a, (0, None))[0] for a in distinct), default=0)
        if shared >= MIN_PREFIX_TOKENS:
            self.hits += 1
            for _, entry in best.values():
                self.entries.move_to_end(entry)
            return shared, {a: [(k[:, :, :shared], v[:, :, :shared]) for k, v in self.entries[best[a][1]]]
                            for a in distinct}
        if len(ids) < 2 or common < MIN_PREFIX_TOKENS:
            return 0, {}
        dev = next(model.parameters()).device
        out = model(input_ids=torch.tensor([list(first[:common])] * len(distinct), device=dev), use_cache=True,
                    **kwargs(distinct))
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        kv = {a: [(k[u:u + 1], v[u:u + 1]) for k, v in layers] for u, a in enumerate(distinct)}
        for a in distinct:
            self._put((key, a, tuple(first[:common])), kv[a])
        return common, kv

    def keep(self, key: tuple, ids: Sequence[Sequence[int]], adapters: Sequence[str | None], cache: Any,
             mask: Any) -> None:
        """Keep each adapter's longest prompt of a computed group: its rows of ``cache`` where ``mask`` is 1."""
        longest: dict[str | None, int] = {}
        for k, (s, a) in enumerate(zip(ids, adapters)):
            if a not in longest or len(s) > len(ids[longest[a]]):
                longest[a] = k
        for a, k in longest.items():
            if len(ids[k]) < MIN_PREFIX_TOKENS or (key, a, tuple(ids[k])) in self.entries:
                continue
            cols = mask[k].nonzero()[:, 0]
            self._put((key, a, tuple(ids[k])), [(layer.keys[k:k + 1].index_select(2, cols),
                                                 layer.values[k:k + 1].index_select(2, cols))
                                                for layer in cache.layers])

    def _put(self, entry: tuple, kv: list[tuple[Any, Any]]) -> None:
        self.entries[entry] = kv
        self.entries.move_to_end(entry)
        while len(self.entries) > self.max_entries or (
                len(self.entries) > 1 and sum(len(e[2]) for e in self.entries) > self.max_tokens):
            self.entries.popitem(last=False)


def _common(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """The length of the common prefix of ``a`` and ``b``, at most ``limit``."""
    n = 0
    limit = min(limit, len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n
