"""Rows packed into prompts that fit a model's context window (AI_AGG's map and combine steps): tokens counted
with the model's own tokenizer and chat template, texts cut to a budget, consecutive items grouped greedily."""

from __future__ import annotations

from typing import Sequence

from .complete import prompt_ids
from .models import LoadedModel


def prompt_tokens(loaded: LoadedModel, text: str) -> int:
    """The tokens of ``text`` as a user turn through the chat template, the assistant turn opened."""
    return len(prompt_ids(loaded, [{"role": "user", "content": text}]))


def fitted(loaded: LoadedModel, texts: Sequence[str], limit: int) -> tuple[list[str], list[int]]:
    """Each text cut to at most ``limit`` tokens (at a token boundary), and each one's token count."""
    ids = loaded.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    out, counts = [], []
    for text, row in zip(texts, ids):
        if len(row) > limit:
            text, row = loaded.tokenizer.decode(row[:limit]), row[:limit]
        out.append(text)
        counts.append(len(row))
    return out, counts


def pack(counts: Sequence[int], budget: int, per_item: int = 0) -> list[list[int]]:
    """Consecutive items grouped so each group's tokens (``counts`` plus ``per_item`` each) stay within ``budget``;
    an item is never split (callers cut items to the budget first). Returns the groups' item indices."""
    groups: list[list[int]] = []
    used = budget + 1
    for i, n in enumerate(counts):
        if used + n + per_item > budget and (not groups or groups[-1]):
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += n + per_item
    return groups
