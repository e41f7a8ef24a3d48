"""The running batch of a decode loop across requests (``batcher.py``): rows join it, step together, and leave.

``decode.py``'s continuous batch, opened up: a group of rows joins whenever the loop admits it (its prompts
computed after the prefix they share with earlier prompts, ``prefix.Store``), every step computes one token for
each running row, and the loop takes out the rows that ended. The cache is ``decode.py``'s: one tensor pair per
layer, rows left-padded to a common length, each row's positions counting only its own tokens, so every row
computes what it would compute alone.

Rows of several adapters of one base share the batch (``lora_mix.Mixer``, rebuilt when a new adapter joins); a
forward holds ``loaded.lock`` and applies its adapters only while it runs, so COMPLETE, training and other batches
of the model interleave with it step by step. Each row's token is greedy (``decode._choose``: COMPLETE's choice) or
sampled with its own temperature and top_p after its grammar's mask.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

from . import complete, constrain, decode, lora_mix, prefix
from .models import LoadedModel


@dataclass(eq=False)
class Row(decode.Row):
    """A row of the running batch: ``decode.Row`` and how its tokens are chosen."""

    temperature: float = 0.0
    top_p: float = 1.0
    generator: Any = None
    """The row's own random generator (a request's seed), or None: torch's default one."""


class Batch:
    """The running rows of one options key (``key[-1]`` is the dtype): their cache, mask, positions, last tokens."""

    def __init__(self, loaded: LoadedModel, key: tuple, prefixes: prefix.Store):
        self.loaded, self.key, self.prefixes = loaded, key, prefixes
        self.rows: list[Row] = []
        self.cache = self.mask = self.pos = self.last = None
        self.mixer: lora_mix.Mixer | None = None
        self._layers: tuple[tuple, list[Any]] = ((), [])

    def prefill(self, rows: Sequence[Row]) -> tuple[Any, Any, Any, int]:
        """The rows' prompts through the model after their shared prefix: (cache, mask, first token per row, the
        shared length). The rows join with ``join``."""
        import torch
        from transformers import DynamicCache

        seqs, adapters = [r.ids for r in rows], [r.adapter for r in rows]
        with self._forward(rows) as kw:
            model = self.loaded.model
            dev = next(model.parameters()).device
            shared, kv = self.prefixes.lookup(model, self.key, seqs, adapters, kw)
            ids, mask = prefix.layout(seqs, shared, self.loaded.tokenizer.pad_token_id)
            ids, mask = ids.to(dev), mask.to(dev)
            position = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache(ddp_cache_data=[
                (torch.cat([kv[a][i][0] for a in adapters]), torch.cat([kv[a][i][1] for a in adapters]))
                for i in range(len(next(iter(kv.values()))))]) if shared else DynamicCache()
            out = model(input_ids=ids[:, shared:], attention_mask=mask, position_ids=position[:, shared:],
                        cache=cache, use_cache=True, logits_to_keep=1, **kw(adapters))
            cache = decode._cache(out)
            self.prefixes.keep(self.key, seqs, adapters, cache, mask)
            first = pick(out.logits[:, -1, :].float(), rows)
        return cache, mask, first, shared

    def join(self, rows: Sequence[Row], live: list[int], cache: Any, mask: Any, first: Any) -> None:
        """The prefilled rows at indices ``live`` (the others ended at their first token) join the batch."""
        import torch
        from transformers import DynamicCache

        if not live:
            return
        idx = torch.tensor(live, dtype=torch.long, device=mask.device)
        if len(live) < len(rows):
            cache.batch_select_indices(idx)
        mask, first = mask[idx], first[idx]
        if self.rows:
            kv, self.mask = decode._join(decode._layers(self.cache), self.mask, decode._layers(cache), mask)
            self.cache = DynamicCache(ddp_cache_data=kv)
            self.pos = torch.cat([self.pos, mask.sum(-1)])
            self.last = torch.cat([self.last, first])
        else:
            self.cache, self.mask, self.pos, self.last = cache, mask, mask.sum(-1), first
        self.rows = self.rows + [rows[k] for k in live]

    def step(self) -> Any:
        """One forward over the running rows: each row's next token (the rows keep them with ``retain``)."""
        import torch

        mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=self.mask.device)],
                         dim=1)
        with self._forward(()) as kw:
            out = self.loaded.model(input_ids=self.last.unsqueeze(1), attention_mask=mask,
                                    position_ids=self.pos.unsqueeze(1), cache=self.cache, use_cache=True,
                                    logits_to_keep=1, **kw([r.adapter for r in self.rows]))
            tokens = pick(out.logits[:, -1, :].float(), self.rows)
        self.mask, self.pos, self.last = mask, self.pos + 1, tokens
        return tokens

    def retain(self, keep: list[int]) -> None:
        """Only the rows at indices ``keep`` go on; columns that are padding in every row left are cut."""
        import torch
        from transformers import DynamicCache

        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[k] for k in keep]
        if not keep:
            self.cache = self.mask = self.pos = self.last = self.mixer = None
            return
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.mask, self.pos, self.last = self.mask[idx], self.pos[idx], self.last[idx]
        self.cache.batch_select_indices(idx)
        first = int(self.mask.any(0).nonzero()[0])
        if first >= decode.TRIM_MIN:
            self.cache = DynamicCache(ddp_cache_data=[(k[:, :, first:], v[:, :, first:])
                                                      for k, v in decode._layers(self.cache)])
            self.mask = self.mask[:, first:]

    @contextlib.contextmanager
    def _forward(self, joining: Sequence[Row]):
        """Under the model's lock and inference mode, in the key's precision, with the adapters of the running and
        ``joining`` rows: yields the model's keyword arguments for a forward over rows of adapters ``names``."""
        import torch

        with self.loaded.lock, torch.inference_mode(), complete._precision(self.loaded.model, self.key[-1]):
            model = self.loaded.model
            if not hasattr(model, "peft_config"):  # no adapter was ever attached
                yield _no_kwargs
                return
            adapters = list(dict.fromkeys([r.adapter for r in self.rows] + [r.adapter for r in joining]))
            if not any(adapters):
                with _base_only(self._lora_layers(model), ()):
                    yield _no_kwargs
                return
            if (self.mixer is None or self.mixer.model is not model
                    or not {a or lora_mix.BASE for a in adapters} <= set(self.mixer.adapters)):
                self.mixer = lora_mix.Mixer(model, adapters)
            mixer = self.mixer
            if not mixer.stacked:  # peft's adapter_names path: each layer picks every row's adapter itself
                with mixer:
                    yield mixer.kwargs
                return
            # every adapted Linear holding one of the batch's adapters computes the rows' own; the others run their
            # base layer alone, whatever adapter peft has active (peft's disable_adapter() costs more than a step)
            with mixer, _base_only(self._lora_layers(model), {id(m) for m, *_ in mixer.layers}):
                yield mixer.kwargs

    def _lora_layers(self, model: Any) -> list[Any]:
        """The model's LoRA layers (found again when the model or its set of adapters changed)."""
        key = (id(model), tuple(self.loaded.adapters))
        if self._layers[0] != key:
            from peft.tuners.lora.layer import LoraLayer

            self._layers = (key, [m for m in model.modules() if isinstance(m, LoraLayer)])
        return self._layers[1]


def _no_kwargs(names: Sequence[str | None]) -> dict[str, Any]:
    return {}


@contextlib.contextmanager
def _base_only(layers: list[Any], skip: Any):
    """The LoRA layers of ``layers`` (but those whose id is in ``skip``) compute their base layer alone."""
    patched = [m for m in layers if id(m) not in skip]
    for m in patched:
        m.forward = m.base_layer.__call__  # a bound method: a Module would be registered as a submodule
    try:
        yield
    finally:
        for m in patched:
            del m.forward  # the class's forward again


def pick(logits: Any, rows: Sequence[Row]) -> Any:
    """Each row's next token: greedy (``decode._choose``: COMPLETE's choice), or sampled with the row's temperature
    and top_p after its grammar's mask (``constrain.Processor``'s order), then held to the row's budget
    (``constrain.take``)."""
    import torch

    if all(r.temperature == 0 for r in rows):
        return decode._choose(logits, rows)
    states = [r.constraint for r in rows]
    constrained = any(s is not None for s in states)
    if constrained:
        constrain.mask_rows(logits, states)
    tokens = logits.argmax(-1)
    for k, r in enumerate(rows):
        if r.temperature > 0:
            scores = logits[k] / r.temperature
            if r.top_p < 1.0:
                ordered, order = torch.sort(scores, descending=True)
                probs = ordered.softmax(-1)
                drop = probs.cumsum(-1) - probs > r.top_p  # keep the tokens that reach top_p, at least one
                scores = scores.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
            tokens[k] = torch.multinomial(scores.softmax(-1), 1, generator=r.generator)[0]
    if constrained:  # each constrained row held to its budget: its closing path's token where its choice is not
        tokens = torch.tensor(constrain.take(states, tokens.tolist(), [r.max_new - len(r.new) for r in rows]),
                              device=tokens.device)
    return tokens.to(torch.long)
