"""How likely a model finds a given completion: the mean loss on the completion's tokens, no generation.

EVALUATE's ``completion_loss`` (and the retention check's loss of the base model's own answers) score a pair by
teacher forcing: the prompt in the model's chat template, then the completion, and the mean cross-entropy (nats
per token) over the completion's tokens only, as training computes its loss. ``exp`` of it is the perplexity.
``preference_accuracy`` compares two completions' log-probabilities, the sums of the same per-token losses.
"""

from __future__ import annotations

from typing import Sequence

from .complete import _adapter
from .data import collate, tokenize_pairs
from .models import LoadedModel

BATCH_ROWS = 8


def completion_logprobs(loaded: LoadedModel, pairs: Sequence[tuple[str, str]], adapter: str | None = None,
                        ) -> list[float | None]:
    """The log-probability of each pair's completion under the model: the sum over its tokens (None as below)."""
    return completion_losses(loaded, pairs, adapter, total=True)


def completion_losses(loaded: LoadedModel, pairs: Sequence[tuple[str, str]], adapter: str | None = None,
                      total: bool = False) -> list[float | None]:
    """The mean loss of each (prompt, completion) pair's completion tokens under the model (and adapter);
    ``total``: minus the summed loss instead, the completion's log-probability.

    A pair whose completion has no token inside the model's context gets None.
    """
    import torch

    tok = loaded.tokenizer
    examples = []
    for prompt, completion in pairs:  # one at a time: a dropped pair must not shift the others
        found = tokenize_pairs(tok, [(prompt, completion)], loaded.context_length)
        examples.append(found[0] if found else None)
    out: list[float | None] = [None] * len(examples)
    todo = sorted((i for i, e in enumerate(examples) if e is not None), key=lambda i: len(examples[i].input_ids))
    model = loaded.model
    dev = next(model.parameters()).device
    for start in range(0, len(todo), BATCH_ROWS):
        chunk = todo[start:start + BATCH_ROWS]
        batch = collate([examples[i] for i in chunk], tok.pad_token_id)
        with loaded.lock, torch.inference_mode(), _adapter(model, adapter):
            logits = model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev),
                           position_ids=batch["position_ids"].to(dev)).logits.float()
        labels = batch["labels"].to(dev)[:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none",
                                                   ignore_index=-100)
        counts = (labels != -100).sum(dim=1)
        for k, i in enumerate(chunk):
            n = int(counts[k])
            out[i] = (-float(losses[k].sum()) if total else float(losses[k].sum() / n)) if n else None
    return out
