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
