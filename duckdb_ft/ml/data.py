"""Training data: query → checked columns; stored rows → tokenized, completion-masked examples → random batches packed
into rows."""

from __future__ import annotations

import itertools
import random
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..errors import InvalidArgument

TEXT_TYPES = ("VARCHAR", "STRING", "TEXT", "CHAR", "BPCHAR")
IGNORE = -100  # label of tokens outside the loss (the prompt, padding)
PACK_SLACK = 128  # tokens a packed row may run past its batch's longest example


#: The columns a training query returns, by FINETUNE's option ``method``: text, except kto's ``label`` (BOOLEAN).
COLUMNS = {"sft": ("prompt", "completion"), "dpo": ("prompt", "chosen", "rejected"),
           "kto": ("prompt", "completion", "label")}
_ALIAS = {"sft": "SELECT question AS prompt, answer AS completion FROM my_table",
          "dpo": "SELECT question AS prompt, kept AS chosen, discarded AS rejected FROM drafts",
          "kto": "SELECT question AS prompt, answer AS completion, thumbs_up AS label FROM feedback"}


def check_columns(cur: Any, query: str, what: str = "training query", method: str = "sft") -> None:
    """The query must return the method's columns (:data:`COLUMNS`); the error shows how to alias.

    Binding the query (``DESCRIBE``) also reports unknown tables and columns before any job exists.
    """
    try:
        described = cur.execute(f"DESCRIBE (\n{query}\n)").fetchall()
    except Exception as e:  # duckdb.Error: the user's query does not bind
        msg = str(e).split("\n")[0]
        raise InvalidArgument(f"the {what} fails: {msg}") from None
    types = {row[0]: str(row[1]).upper() for row in described}
    wanted = COLUMNS[method]
    missing = [c for c in wanted if c not in types]
    if missing:
        returned = ", ".join(f"{c} {t}" for c, t in types.items()) or "none"
        kind = "" if method == "sft" else f" (method {method})"
        raise InvalidArgument(
            f"the {what}{kind} must return columns {', '.join(wanted[:-1])} and {wanted[-1]}; it returned: "
            f"{returned}. Alias your columns, e.g. {_ALIAS[method]}"
        )
    for c in wanted:
        if c == "label":
            if types[c] != "BOOLEAN":
                raise InvalidArgument(f"column label of the {what} must be BOOLEAN (true: a good answer, false: a "
                                      f"bad one), got {types[c]}: e.g. rating >= 4 AS label, or thumbs = 'up' AS label")
        elif not types[c].startswith(TEXT_TYPES):
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


def encode_pairs(tokenizer: Any, pairs: Iterable[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each pair's prompt part and completion part in the chat template, before any truncation.

    The prompt part is the conversation rendered up to the generation prompt; the completion part, the rest of the
    whole conversation; each is tokenized on its own, in batches with the fast tokenizer. Training
    (:func:`tokenize_pairs`) and FINETUNE 'ESTIMATE' both count tokens with this; :mod:`.chat_tokens` renders the
    template once, not per pair, and gives exactly what rendering each pair gives.
    """
    from .chat_tokens import encoder

    prompts, completions = [], []
    for prompt, completion in pairs:
        prompts.append(prompt)
        completions.append(completion)
    return encoder(tokenizer).encode(prompts, completions)


def fit_window(n_prompt: int, n_completion: int, max_seq_length: int) -> tuple[int, bool, bool]:
    """(tokens kept, truncated?, anything to learn?) of a pair of ``n_prompt`` + ``n_completion`` tokens.

    A pair longer than ``max_seq_length`` is cut at the end; it has something to learn when a completion token is
    left at a position past the first (the loss predicts position i from the tokens before it).
    """
    n = n_prompt + n_completion
    truncated = n > max_seq_length
    n = min(n, max_seq_length)
    return n, truncated, n - max(n_prompt, 1) > 0


#: With no held-out rows, the validation loss is measured on every LOSS_SAMPLE_EVERY-th training row (at least
#: LOSS_SAMPLE_LEAST of them): the loss curve and keep_best's choice need no more, and evaluating every training row
#: (in float32) cost about as much as training them.
LOSS_SAMPLE_EVERY, LOSS_SAMPLE_LEAST = 10, 64


def loss_sample(examples: Sequence[Any]) -> list[Any]:
    """The training examples the validation loss is measured on when every row trains: evenly spaced, the same
    ones every evaluation (so the curve compares like with like), all of them for a small set."""
    n = len(examples)
    step = max(1, min(LOSS_SAMPLE_EVERY, n // LOSS_SAMPLE_LEAST))
    return [examples[i] for i in range(0, n, step)]


def tokenize_pairs(
    tokenizer: Any, pairs: Iterable[tuple[str, str]], max_seq_length: int, stats: TokenStats | None = None
) -> list[Example]:
    """Tokenize (prompt, completion) pairs with the chat template (:func:`encode_pairs`); the loss covers the
    completion only. Pairs longer than ``max_seq_length`` are cut at the end and counted (:func:`fit_window`)."""
    stats = stats if stats is not None else TokenStats()
    enc_p, enc_c = encode_pairs(tokenizer, pairs)
    return [Example(ids, [IGNORE] * n_prompt + ids[n_prompt:])
            for ids, n_prompt in _windows(enc_p, enc_c, max_seq_length, stats)]


def _windows(enc_p: Sequence[list[int]], enc_c: Sequence[list[int]], max_seq_length: int,
             stats: TokenStats) -> Iterator[tuple[list[int], int]]:
    """Each encoded pair fitted to the window (:func:`fit_window`) as (token ids, prompt length), counted in
    ``stats``; pairs with nothing left to learn are dropped (counted)."""
    for p_ids, c_ids in zip(enc_p, enc_c):
        n, truncated, learnable = fit_window(len(p_ids), len(c_ids), max_seq_length)
        stats.truncated += truncated
        if not learnable:  # nothing to learn: the prompt fills the window
            stats.dropped += 1
            continue
        ids = (p_ids + c_ids)[:n]
        stats.examples += 1
        stats.tokens += len(ids)
        yield ids, len(p_ids)


class TokenizedExamples(Sequence):
    """Tokenized examples held compactly, for many rows: every example's token ids in one int32 buffer, memory-mapped
    from an unlinked temporary file (nothing to clean up, even after a crash; the kernel pages it in and out), with
    each example's offset and prompt length in numpy arrays. ``examples[i]`` builds that one :class:`Example` (a few
    microseconds); :attr:`lengths` and :attr:`n_trained` serve whole-epoch planning without building any. Python
    lists of ids cost about 36 bytes a token, this 4 (plus 12 a row)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="duckdb-ft-tokens-")
        self._lengths: list[np.ndarray] = []
        self._prompts: list[np.ndarray] = []
        self._ids: np.ndarray | None = None

    def add(self, ids: list[list[int]], n_prompt: list[int]) -> None:
        """Append examples (token ids, and how many of them are the prompt's), before :meth:`done`."""
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
        self._file.write(flat.tobytes())
        self._lengths.append(lengths.astype(np.int32))
        self._prompts.append(np.asarray(n_prompt, dtype=np.int32))

    def done(self) -> TokenizedExamples:
        """Map the written ids and index them; no more :meth:`add` after."""
        self.lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        self.n_prompt = np.concatenate(self._prompts) if self._prompts else np.zeros(0, np.int32)
        self.offsets = np.zeros(len(self.lengths) + 1, np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])
        self._file.flush()
        total = int(self.offsets[-1])
        self._ids = (np.memmap(self._file, dtype=np.int32, mode="r", shape=(total,)) if total
                     else np.zeros(0, np.int32))
        self.n_trained = np.maximum(self.lengths - self.n_prompt, 0)
        self._lengths, self._prompts = [], []
        return self

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):  # a list of those examples (a rank's share: examples[rank::size])
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        ids = self._ids[self.offsets[i]:self.offsets[i + 1]].tolist()  # type: ignore[index]
        n_p = min(int(self.n_prompt[i]), len(ids))
        return Example(ids, [IGNORE] * n_p + ids[n_p:])

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])


def tokenize_reader(tokenizer: Any, reader: Any, max_seq_length: int, stats: TokenStats) -> TokenizedExamples:
    """Tokenize an Arrow RecordBatchReader of (prompt, completion), one record batch at a time, as
    :func:`tokenize_pairs` does, into a :class:`TokenizedExamples` (the training worker's data, in bounded memory)."""
    out = TokenizedExamples()
    for batch in reader:
        enc_p, enc_c = encode_pairs(tokenizer, zip(batch.column("prompt").to_pylist(),
                                                   batch.column("completion").to_pylist()))
        fitted = list(_windows(enc_p, enc_c, max_seq_length, stats))
        out.add([ids for ids, _ in fitted], [n_prompt for _, n_prompt in fitted])
    return out.done()


def packed_batches(examples: Sequence[Example], batch_size: int, seed: int) -> PackedPlan:
    """One epoch of random batches, each packed into rows: a batch is a list of rows, a row a list of example indices.

    The examples are shuffled by ``seed`` and cut into batches of ``batch_size``, as a random sampler draws them, so
    every optimizer step sees a random mix of rows (batches grouped by length instead tie each step to one kind of
    row, and the per-step mean then over-weights the tokens of short rows: 8% higher validation loss on the
    benchmark). Within a batch, examples are packed first-fit, longest first, into rows of one width: the longest
    example, or up to ``PACK_SLACK`` more where that needs fewer positions in all. Padding every example to the
    longest pads about a third of the positions on uneven rows; packing, under a tenth. ``collate_rows`` keeps
    attention inside each example. Deterministic for a seed, so a resumed job replays the same order.

    The plan is a :class:`PackedPlan`: only the shuffle happens here; batches are packed when first asked for.
    """
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    found = getattr(examples, "lengths", None)
    lengths = (np.asarray(found, dtype=np.int64) if found is not None
               else np.fromiter((len(e.input_ids) for e in examples), dtype=np.int64, count=len(examples)))
    return PackedPlan(np.asarray(order, dtype=np.int64), lengths, batch_size)


class PackedPlan(Sequence):
    """An epoch's packed batches (see :func:`packed_batches`), computed on demand: batch ``k`` depends only on
    ``order[k*batch_size:(k+1)*batch_size]``, so ``plan[k]`` (or a slice: a list of batches) packs just the ``CHUNK``
    batches around it, all at once in numpy (the first-fit of every batch at every width, one array operation per
    example slot), and keeps that chunk's arrays for the next ask; a batch's lists are built when it is asked for. A
    resumed job skips to its step without packing the steps before it; ``len`` is known at once."""

    CHUNK = 4096  # batches packed together

    def __init__(self, order: np.ndarray, lengths: np.ndarray, batch_size: int) -> None:
        self.order, self.lengths, self.batch_size = order, lengths, batch_size
        self._chunk: tuple[int, tuple[np.ndarray, ...]] = (-1, ())

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        c = k // self.CHUNK
        if self._chunk[0] != c:
            self._chunk = (c, self._pack(c * self.CHUNK, min(len(self), (c + 1) * self.CHUNK)))
        members, row_of, n_rows = (a[k - c * self.CHUNK].tolist() for a in self._chunk[1])
        batch: list[list[int]] = [[] for _ in range(n_rows)]
        for i, row in zip(members, row_of):
            if i >= 0:  # not a short last batch's empty slot
                batch[row].append(i)
        return batch

    def _pack(self, first: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batches ``first``..``end - 1``, each packed first-fit, longest first, at every width from its longest to
        ``PACK_SLACK`` more in steps of 8, keeping the first width with the fewest positions (then narrowest rows)."""
        bs = self.batch_size
        members = np.full((end - first) * bs, -1, dtype=np.int64)  # a short last batch ends in slots of length 0
        got = self.order[first * bs:end * bs]
        members[:len(got)] = got
        members = members.reshape(end - first, bs)
        n = np.where(members >= 0, self.lengths[np.maximum(members, 0)], 0)
        by = np.argsort(-n, axis=1, kind="stable")  # longest first; ties in drawn order, as sorted(reverse=True)
        members, n = np.take_along_axis(members, by, 1), np.take_along_axis(n, by, 1)
        longest, b = n[:, 0], np.arange(len(n))
        best_p = best_u = best_rows = None
        for extra in range(0, PACK_SLACK + 1, 8):
            width = longest + extra
            free = np.full((len(n), bs), -1, dtype=np.int64)  # room left in each row; -1: no such row yet
            rows = np.zeros(len(n), dtype=np.int64)
            row_of = np.empty_like(n)
            for j in range(bs):
                fits = free >= n[:, j:j + 1]
                k = np.where(fits.any(1), fits.argmax(1), rows)  # the first row with room, else a new one
                new = k == rows
                free[b, k] = np.where(new, width, free[b, k]) - n[:, j]
                rows += new
                row_of[:, j] = k
            used = np.where(free >= 0, width[:, None] - free, 0).max(1)
            p = rows * used
            if best_p is None:
                best_p, best_u, best_rows, best_n = p, used, row_of, rows
            else:  # the first width with the fewest positions, then the narrowest rows: min() over widths in order
                better = (p < best_p) | ((p == best_p) & (used < best_u))
                best_p, best_u = np.where(better, p, best_p), np.where(better, used, best_u)
                best_rows, best_n = np.where(better[:, None], row_of, best_rows), np.where(better, rows, best_n)
        return members, best_rows, best_n  # per batch: its members longest first, the row of each, rows


def split_rows(examples: Sequence[Example], rows: list[list[int]], positions: int | None) -> list[list[list[int]]]:
    """A packed batch's rows as consecutive micro-batches of at most ``positions`` positions each (rows x the
    widest row of the micro-batch, as ``collate_rows`` pads them; a row wider than that alone); None: one
    micro-batch. Gradients summed over the micro-batches are the batch's: the activations held for backward are
    bounded by ``positions`` instead of the batch's size."""
    if positions is None:
        return [rows]
    parts: list[list[list[int]]] = [[]]
    width = 0
    for row in rows:
        n = row_width(examples, row)
        if parts[-1] and (len(parts[-1]) + 1) * max(width, n) > positions:
            parts.append([])
            width = 0
        parts[-1].append(row)
        width = max(width, n)
    return parts


def row_width(examples: Sequence[Example], row: list[int]) -> int:
    """The positions a packed row of these examples takes."""
    return sum(len(examples[i].input_ids) for i in row)


def padded_positions(examples: Sequence[Example], rows: list[list[int]]) -> int:
    """The positions packed rows are computed at: rows x the widest row, as ``collate_rows`` pads them."""
    return len(rows) * max(row_width(examples, row) for row in rows)


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """One example per row, right-padded to the longest: input_ids, attention_mask, labels, position_ids."""
    return collate_rows([[e] for e in examples], pad_id)


def collate_rows(rows: list[list[Example]], pad_id: int) -> dict[str, Any]:
    """Rows of one or more examples each, right-padded to the longest row.

    ``position_ids`` restart at 0 for every example of a row, which is how transformers recognizes packed rows and
    keeps each example's attention to itself (padding continues the last example's positions: a real token never
    attends to a later position). ``labels`` are IGNORE on padding and prompts; an example starts with its prompt,
    so no loss crosses from one example into the next. ``attention_mask`` marks the real tokens.
    """
    import torch

    lengths = [sum(len(e.input_ids) for e in row) for row in rows]
    width = max(lengths)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.empty((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e.input_ids)
            ids[k, at:at + n] = torch.tensor(e.input_ids)
            labels[k, at:at + n] = torch.tensor(e.labels)
            positions[k, at:at + n] = torch.arange(n)
            at += n
        mask[k, :at] = 1
        start = at - len(row[-1].input_ids)
        positions[k, at:] = torch.arange(at - start, width - start)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions}


def iter_batches(examples: list[Example], batches: list[list[int]], pad_id: int) -> Iterator[dict[str, Any]]:
    for b in batches:
        yield collate([examples[i] for i in b], pad_id)


def collate_packed(examples: Sequence[Example], rows: list[list[int]], pad_id: int) -> dict[str, Any]:
    """One micro-batch of packed rows (example indices per row), collated."""
    return collate_rows([[examples[i] for i in row] for row in rows], pad_id)


def iter_packed(examples: list[Example], batches: list[list[list[int]]], pad_id: int) -> Iterator[dict[str, Any]]:
    for rows in batches:
        yield collate_packed(examples, rows, pad_id)
