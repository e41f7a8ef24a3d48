"""Forgetting: what did fine-tuning cost the model elsewhere? A fine-tuned model against its own base model on a
small general prompt set that ships with duckdb-ft.

The prompts (:data:`PROMPTS`, 36 of them) are made by this module from short templates and topics written for
duckdb-ft (general knowledge, instructions, arithmetic, rewriting): no data set is downloaded, nothing licensed.
For each fine-tuned model, both models answer every prompt greedily, then:

- ``agreement``: the share of prompts where the tuned model's answer equals the base model's (normalized match);
  ``rouge_l``: their mean ROUGE-L; 1.0 means the tuning changed nothing on these prompts.
- ``base_answer_loss_base`` / ``base_answer_loss_tuned``: the mean loss (nats per token) of the base model's own
  answers under the base model and under the tuned model; ``loss_increase`` is their difference. A tuned model
  that still finds its base's answers likely has forgotten little.
"""

from __future__ import annotations

from typing import Any, Callable

from . import metrics

MAX_TOKENS = 48

_QUESTIONS = ["What is the capital of {}?", "Name one famous landmark in {}.", "What language is spoken in {}?"]
_PLACES = ["France", "Japan", "Brazil", "Egypt"]
_INSTRUCTIONS = ["Explain in one sentence what {} is.", "Give two tips about {}.", "Write a short title for a text about {}."]
_TOPICS = ["photosynthesis", "a database index", "saving money", "the water cycle"]
_ARITHMETIC = ["What is {} plus {}?", "What is {} times {}?"]
_NUMBERS = [(7, 5), (12, 3), (9, 8)]
_REWRITES = ["Rewrite this sentence politely: {}", "Translate into French: {}"]
_SENTENCES = ["Give me the report now.", "The meeting is at noon.", "Close the door."]


def _prompts() -> list[str]:
    out = [q.format(p) for q in _QUESTIONS for p in _PLACES]
    out += [i.format(t) for i in _INSTRUCTIONS for t in _TOPICS]
    out += [a.format(x, y) for a in _ARITHMETIC for x, y in _NUMBERS]
    out += [r.format(s) for r in _REWRITES for s in _SENTENCES]
    return out


PROMPTS: list[str] = _prompts()


def measure(generate: Callable[[list[str], str | None], list[str]],
            losses: Callable[[list[tuple[str, str]], str | None], list[float | None]],
            adapter: str) -> dict[str, Any]:
    """Retention figures of one fine-tuned model (``adapter``) against its base (adapter None).

    ``generate(prompts, adapter)`` answers greedily, ``losses(pairs, adapter)`` gives completion losses: both on
    the base model's loaded weights, so the caller picks the model and this module stays free of torch.
    """
    base = generate(PROMPTS, None)
    tuned = generate(PROMPTS, adapter)
    agreement = metrics.text_scores("normalized_match", tuned, base)
    rouge = metrics.text_scores("rouge_l", tuned, base)
    pairs = list(zip(PROMPTS, base))
    under_base = [x for x in losses(pairs, None)]
    under_tuned = [x for x in losses(pairs, adapter)]
    kept = [(a, b) for a, b in zip(under_base, under_tuned) if a is not None and b is not None]
    loss_base = sum(a for a, _ in kept) / len(kept) if kept else None
    loss_tuned = sum(b for _, b in kept) / len(kept) if kept else None
    return {
        "prompts": len(PROMPTS), "agreement": sum(agreement) / len(PROMPTS), "rouge_l": sum(rouge) / len(PROMPTS),
        "base_answer_loss_base": loss_base, "base_answer_loss_tuned": loss_tuned,
        "loss_increase": None if loss_base is None else loss_tuned - loss_base,
    }
