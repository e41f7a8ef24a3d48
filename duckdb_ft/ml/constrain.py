"""Constrained decoding for ``response_format``: each row's answer held to its JSON Schema, token by token, with
xgrammar (a compiled grammar per schema, a matcher per row, a token bitmask applied to the row's logits before the
token is chosen).

How a row's document is closed within its ``max_tokens`` (the closing path each row carries) is :mod:`.closing`'s.

xgrammar is imported only here (and in :mod:`.closing`, on the matchers made here), when a row has a
``response_format`` (README "AI_COMPLETE": why xgrammar).
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import InvalidArgument, ModelLoadError
from . import closing

if TYPE_CHECKING:
    from .models import LoadedModel

#: Grammars kept per tokenizer (the schemas used last); a chunk's rows of one schema share one.
MAX_GRAMMARS = 64
#: The (tokenizer info, compiler, its lock, its grammars by schema) of each tokenizer; weak keys: they go with
#: their tokenizer.
_COMPILERS: "weakref.WeakKeyDictionary[Any, tuple[Any, Any, threading.Lock, dict[str, Grammar]]]" = \
    weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as e:
        raise ModelLoadError("response_format needs the grammar engine xgrammar, which is not installed: run "
                             "`make install`, or pip install --no-deps xgrammar==0.2.8 apache-tvm-ffi") from e
    return xgrammar


@dataclass
class Grammar:
    """One schema compiled for one tokenizer: what each row's matcher starts from."""

    compiled: Any
    closers: list[int]
    singles: list[int]
    """The tokens of single printable characters (a loop's way out is searched among them and the closers)."""
    stops: list[int]
    shortest: tuple[int, ...]
    """The closing policy's path from an empty answer: the schema's shortest document and the end token."""
    encode: Any
    decode: Any
    vocab: int
    encoded: dict[str, list[int]] = field(default_factory=dict, repr=False)
    """Each jump-forward string's tokens (at most ``closing.MAX_ENCODED``; the policy looks them up at every step)."""

    @property
    def reserve(self) -> int:
        """The fewest tokens a row of this schema needs: its shortest document and the end token."""
        return len(self.shortest)


@dataclass
class RowState:
    """One row's place in its grammar."""

    grammar: Grammar
    matcher: Any
    done: bool = False
    steps: int = 0
    path: list[int] = field(default_factory=list, repr=False)
    """Tokens that end the document from where the row is, never more than its tokens left (``take``)."""
    closed: int = 0
    """Tokens the row took from its path instead of the model's choice (its budget would not have closed)."""


def compile(loaded: LoadedModel, response_format: str, stop: Sequence[int]) -> Grammar:
    """The grammar of ``response_format`` (canonical JSON text of ``{"type": "json", "schema": ...}``) for the
    loaded model's tokenizer; compiled once per schema (xgrammar's compiler caches them)."""
    xgr = _xgrammar()
    spec = json.loads(response_format)["schema"]
    tok = loaded.tokenizer
    vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
    with _LOCK:
        entry = _COMPILERS.get(tok)
        if entry is None or entry[0].vocab_size != vocab:
            info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab, stop_token_ids=list(stop))
            entry = (info, xgr.GrammarCompiler(info, max_threads=1), threading.Lock(), {})
            _COMPILERS[tok] = entry
    info, compiler, lock, grammars = entry
    with lock:
        if response_format in grammars:
            grammars[response_format] = grammars.pop(response_format)  # most recently used last
            return grammars[response_format]
        try:
            compiled = compiler.compile_json_schema(json.dumps(spec), any_whitespace=False, strict_mode=True)
        except Exception as e:  # the engine's own refusal of a schema the subset check let through
            raise InvalidArgument(f"response_format schema cannot be compiled: {e}") from None

    def encode(text: str) -> list[int]:
        return list(tok.encode(text, add_special_tokens=False))

    def decode(ids: Sequence[int]) -> str:
        return tok.decode(list(ids), clean_up_tokenization_spaces=False)

    closers = list(dict.fromkeys(ids[0] for ids in map(encode, closing.CLOSERS) if ids))
    singles = [ids[0] for ids in map(encode, map(chr, range(32, 127))) if len(ids) == 1]
    singles = [t for t in dict.fromkeys(singles) if t not in closers]
    g = Grammar(compiled=compiled, closers=closers, singles=singles, stops=list(stop), shortest=(), encode=encode, decode=decode, vocab=vocab)
    path = closing.close_path(g, xgr.GrammarMatcher(compiled), closing.MAX_CLOSE_STEPS)
    if path is None:
        raise InvalidArgument(f"response_format schema cannot be answered within {closing.MAX_CLOSE_STEPS} tokens: the "
                              f"constrained decoder found no document of the schema that short (a schema too large, "
                              f"or a string pattern it cannot complete); simplify the schema or its patterns")
    g.shortest = tuple(path)
    with lock:
        grammars[response_format] = g
        while len(grammars) > MAX_GRAMMARS:
            grammars.pop(next(iter(grammars)))
    return g


def start(grammar: Grammar) -> RowState:
    """A fresh matcher for one row, its closing path the schema's shortest document."""
    return RowState(grammar=grammar, matcher=_xgrammar().GrammarMatcher(grammar.compiled),
                    path=list(grammar.shortest))


def as_json(text: str) -> str:
    """A constrained answer as strict JSON text. xgrammar's string rule for a ``minLength``/``maxLength`` string
    lets raw control characters (tab, newline, ...) through, which strict JSON forbids inside strings: such an
    answer is read leniently and written back with them escaped (its values unchanged); any other answer as is."""
    try:
        json.loads(text)
        return text
    except ValueError:
        pass
    try:
        return json.dumps(json.loads(text, strict=False), ensure_ascii=False)
    except ValueError:
        return text


def check_budget(grammar: Grammar, max_new: int) -> None:
    """Raise InvalidArgument if ``max_new`` tokens cannot hold the schema's shortest answer and its end token."""
    if max_new < grammar.reserve:
        raise InvalidArgument(f"max_tokens {max_new} is too small for the response_format schema: its shortest "
                              f"answer needs {grammar.reserve} tokens")


def mask_rows(logits: Any, states: Sequence[RowState | None]) -> None:
    """Apply each constrained row's grammar to its row of ``logits``, in place: disallowed tokens to -inf."""
    import torch

    xgr = _xgrammar()
    rows = [k for k, s in enumerate(states) if s is not None and not s.done]
    if not rows:
        return
    vocab = states[rows[0]].grammar.vocab
    bitmask = xgr.allocate_token_bitmask(len(states), vocab)  # row k masks logits row k
    for k in rows:
        states[k].matcher.fill_next_token_bitmask(bitmask, k)
    width = min(logits.shape[-1], vocab)
    idx = torch.tensor(rows, device=logits.device)
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.shape[-1] == vocab:
        xgr.apply_token_bitmask_inplace(logits, bitmask, indices=rows)
    else:  # any device or width: the packed bits unpacked by torch itself (no kernel to build)
        shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
        bits = bitmask[rows].to(logits.device).unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and(1).bool()
        allowed = bits.reshape(len(rows), -1)[:, :width]
        sub = logits[idx, :width].masked_fill(~allowed, float("-inf"))
        logits[idx, :width] = sub
        if logits.shape[-1] > width:
            logits[idx, width:] = float("-inf")


def take(states: Sequence[RowState | None], tokens: Sequence[int], remaining: Sequence[int]) -> list[int]:
    """The token each row takes, its matcher advanced by it: the chosen token of ``tokens`` if the row's document
    can still be closed within its ``remaining`` tokens after it, else the next token of the row's closing path
    (unconstrained and finished rows take their chosen token)."""
    out = [int(t) for t in tokens]
    for k, s in enumerate(states):
        if s is None or s.done:
            continue
        t = out[k]
        if not s.path or remaining[k] < len(s.path):
            raise RuntimeError(f"constrained row has {remaining[k]} tokens left but needs {len(s.path)} to close")
        if t == s.path[0]:
            s.path.pop(0)
        else:
            path = closing.path_after(s, t, remaining[k] - 1)
            if path is None:
                t = out[k] = s.path.pop(0)
                s.closed += 1
            else:
                s.path = path
        if not s.matcher.accept_token(t):
            raise RuntimeError(f"constrained decoding took token {t} that its grammar refuses")
        s.steps += 1
        s.done = s.matcher.is_terminated()
    return out


def greedy_pick(logits: Any, states: Sequence[RowState | None], remaining: Sequence[int]) -> Any:
    """The greedy tokens of a batch (argmax of ``logits``, float32), each constrained row held to its grammar and
    closing when its budget runs short (``take``); the matchers advance by the tokens taken."""
    import torch

    mask_rows(logits, states)
    tokens = take(states, logits.argmax(-1).tolist(), remaining)
    return torch.tensor(tokens, dtype=torch.long, device=logits.device)


class Processor:
    """A transformers logits processor for ``generate``. Each constrained row's token is chosen here: among the
    tokens its grammar allows, greedy or sampled (temperature and top-p applied after the mask, so top-p never
    keeps only refused tokens), then held to the row's budget (``take``), and handed to ``generate`` as the row's
    only token. Unconstrained rows get the temperature and top-p; ``generate`` then samples with its own warpers
    off."""

    def __init__(self, states: Sequence[RowState | None], prompt_width: int, max_new: int, temperature: float,
                 top_p: float):
        self.states, self.width, self.max_new = list(states), prompt_width, max_new
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        step = input_ids.shape[1] - self.width
        scores = scores.float()
        mask_rows(scores, self.states)
        if self.temperature > 0:
            scores = scores / self.temperature
            if self.top_p < 1.0:
                ordered, order = torch.sort(scores, descending=True, dim=-1)
                cum = ordered.softmax(-1).cumsum(-1)
                drop = cum - ordered.softmax(-1) > self.top_p  # keep the tokens that reach top_p, at least one
                scores = scores.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        rows = [k for k, s in enumerate(self.states) if s is not None and not s.done]
        if rows:
            if self.temperature > 0:
                chosen = torch.multinomial(scores[rows].softmax(-1), 1)[:, 0]
            else:
                chosen = scores[rows].argmax(-1)
            tokens = take([self.states[k] for k in rows], chosen.tolist(), [self.max_new - step] * len(rows))
            for k, t in zip(rows, tokens):
                scores[k] = float("-inf")
                scores[k, t] = 0.0
        return scores
