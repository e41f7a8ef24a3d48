"""Training data: query → checked columns; stored rows → tokenized, completion-masked, length-grouped batches."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from .errors import InvalidArgument

TEXT_TYPES = ("VARCHAR", "STRING", "TEXT", "CHAR", "BPCHAR")
IGNORE = -100  # label of tokens outside the loss (the prompt, padding)


def check_columns(cur: Any, query: str, what: str = "training query") -> None:
    """The query must return text columns ``prompt`` and ``completion``; the error shows how to alias.

    Binding the query (``DESCRIBE``) also reports unknown tables and columns before any job exists.
    """
    try:
        described = cur.execute(f"DESCRIBE (\n{query}\n)").fetchall()
    except Exception as e:  # duckdb.Error: the user's query does not bind
        msg = str(e).split("\n")[0]
        raise InvalidArgument(f"the {what} fails: {msg}") from None
    types = {row[0]: str(row[1]).upper() for row in described}
    missing = [c for c in ("prompt", "completion") if c not in types]
    if missing:
        returned = ", ".join(f"{c} {t}" for c, t in types.items()) or "none"
        raise InvalidArgument(
            f"the {what} must return columns prompt and completion; it returned: {returned}. "
            f"Alias your columns, e.g. SELECT question AS prompt, answer AS completion FROM my_table"
        )
    for c in ("prompt", "completion"):
        if not types[c].startswith(TEXT_TYPES):
            raise InvalidArgument(
                f"column {c} of the {what} must be text (VARCHAR), got {types[c]}: cast it, e.g. {c}::VARCHAR AS {c}"
            )


@dataclass
class Example:
    """One tokenized pair: input ids, and labels with the prompt masked out (IGNORE)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class TokenStats:
    examples: int = 0
    tokens: int = 0  # all tokens of the kept examples (prompt + completion), as Cortex counts trained tokens
    truncated: int = 0
    dropped: int = 0  # no completion token left inside max_seq_length


def tokenize_pairs(
    tokenizer: Any, pairs: Iterable[tuple[str, str]], max_seq_length: int, stats: TokenStats | None = None
) -> list[Example]:
    """Tokenize (prompt, completion) pairs with the chat template; the loss covers the completion only.

    The template is rendered to text for the prompt alone (with the generation prompt) and for the whole
    conversation; the completion's part is the difference, so the two are tokenized separately in batches with
    the fast tokenizer and joined. Pairs longer than ``max_seq_length`` are cut at the end and counted.
    """
    stats = stats if stats is not None else TokenStats()
    pairs = list(pairs)
    prompt_texts, completion_texts = [], []
    for prompt, completion in pairs:
        user = [{"role": "user", "content": prompt}]
        p = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": completion}], tokenize=False)
        if not full.startswith(p):  # a template that rewrites earlier turns: fall back to the whole text
            raise InvalidArgument("the base model's chat template does not extend the prompt; cannot mask the prompt")
        prompt_texts.append(p)
        completion_texts.append(full[len(p):])
    enc_p = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"] if pairs else []
    enc_c = tokenizer(completion_texts, add_special_tokens=False)["input_ids"] if pairs else []
    out = []
    for p_ids, c_ids in zip(enc_p, enc_c):
        ids = p_ids + c_ids
        labels = [IGNORE] * len(p_ids) + list(c_ids)
        if len(ids) > max_seq_length:
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
            stats.truncated += 1
        if all(x == IGNORE for x in labels[1:]):  # nothing to learn: the prompt fills the window
            stats.dropped += 1
            continue
        out.append(Example(ids, labels))
        stats.examples += 1
        stats.tokens += len(ids)
    return out


def tokenize_reader(tokenizer: Any, reader: Any, max_seq_length: int, stats: TokenStats) -> list[Example]:
    """Tokenize an Arrow RecordBatchReader of (prompt, completion), one record batch at a time."""
    out: list[Example] = []
    for batch in reader:
        cols = batch.to_pydict()
        out.extend(tokenize_pairs(tokenizer, zip(cols["prompt"], cols["completion"]), max_seq_length, stats))
    return out


def length_grouped_batches(examples: list[Example], batch_size: int, seed: int) -> list[list[int]]:
    """Indices in batches of similar length (little padding), batch order shuffled by ``seed``.

    Examples are shuffled, cut into windows of 50 batches, each window sorted by length and cut into batches;
    then the batches are shuffled. Deterministic for a seed, so a resumed job replays the same order.
    """
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: len(examples[i].input_ids), reverse=True)
        batches.extend(chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch to its longest example: input_ids, attention_mask, labels (IGNORE on padding)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for k, e in enumerate(examples):
        n = len(e.input_ids)
        ids[k, :n] = torch.tensor(e.input_ids)
        labels[k, :n] = torch.tensor(e.labels)
        mask[k, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def iter_batches(examples: list[Example], batches: list[list[int]], pad_id: int) -> Iterator[dict[str, Any]]:
    for b in batches:
        yield collate([examples[i] for i in b], pad_id)
