"""Constrained decoding for ``response_format``: each row's answer held to its JSON Schema, token by token, with
xgrammar (a compiled grammar per schema, a matcher per row, a token bitmask applied to the row's logits before the
token is chosen).

The grammar alone does not make a complete answer: a row could still be inside a string when its ``max_tokens``
run out. So each grammar knows how many tokens its shortest document takes (``Grammar.reserve``, plus closing
brackets for its nesting); once a row has no more tokens left than that, it closes: the forced text the grammar
admits next (xgrammar's jump-forward string), else the first allowed of ``"``, ``}``, ``]``, ``,``, ``0``, ``false``,
..., else the model's best allowed token. Every row therefore ends in a complete JSON document that
validates against its schema, and an EOS only when the document is complete. A ``max_tokens`` below the shortest
document is an error before generation.

xgrammar is imported only here, when a row has a ``response_format`` (README "AI_COMPLETE": why xgrammar).
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import InvalidArgument, ModelLoadError
from . import schema as schemas

if TYPE_CHECKING:
    from .models import LoadedModel

#: Tokens tried, in order, when a row closes its document: each ends or shortens what is open.
CLOSERS = ('"', "}", "]", ",", "0", "false", "{", "[", "null")
#: Steps the shortest-document simulation may take before the schema is called too large to close.
MAX_CLOSE_STEPS = 4096
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
    reserve: int
    encode: Any
    vocab: int


@dataclass
class RowState:
    """One row's place in its grammar."""

    grammar: Grammar
    matcher: Any
    done: bool = False
    steps: int = 0
    bits: Any = field(default=None, repr=False)


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

    closers = list(dict.fromkeys(ids[0] for ids in map(encode, CLOSERS) if ids))
    g = Grammar(compiled=compiled, closers=closers, reserve=0, encode=encode, vocab=vocab)
    g.reserve = _shortest(xgr, g) + 2 * schemas.depth(spec) + 2
    with lock:
        grammars[response_format] = g
        while len(grammars) > MAX_GRAMMARS:
            grammars.pop(next(iter(grammars)))
    return g


def _shortest(xgr: Any, g: Grammar) -> int:
    """Tokens the closing policy takes from an empty answer to the end token: the shortest document it writes."""
    state = start(g)
    bitmask = xgr.allocate_token_bitmask(1, g.vocab)
    for n in range(1, MAX_CLOSE_STEPS + 1):
        state.matcher.fill_next_token_bitmask(bitmask, 0)
        state.bits = bitmask[0].numpy()
        token = _forced(state)
        if token is None:
            token = _first_allowed(state.bits, g.vocab)
        state.matcher.accept_token(token)
        if state.matcher.is_terminated():
            return n
    raise InvalidArgument(f"response_format schema is too large: its shortest answer takes more than "
                          f"{MAX_CLOSE_STEPS} tokens")


def start(grammar: Grammar) -> RowState:
    """A fresh matcher for one row."""
    return RowState(grammar=grammar, matcher=_xgrammar().GrammarMatcher(grammar.compiled))


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
    """Raise InvalidArgument if ``max_new`` tokens cannot hold the schema's shortest answer and its closing."""
    if max_new < grammar.reserve:
        raise InvalidArgument(f"max_tokens {max_new} is too small for the response_format schema: its shortest "
                              f"answer needs {grammar.reserve} tokens")


def mask_rows(logits: Any, states: Sequence[RowState | None], remaining: Sequence[int]) -> list[int | None]:
    """Apply each constrained row's grammar to its row of ``logits`` (in place: disallowed tokens to -inf); returns
    per row the token a closing row must take (None: the masked logits choose)."""
    import torch

    xgr = _xgrammar()
    rows = [k for k, s in enumerate(states) if s is not None and not s.done]
    forced: list[int | None] = [None] * len(states)
    if not rows:
        return forced
    vocab = states[rows[0]].grammar.vocab
    bitmask = xgr.allocate_token_bitmask(len(states), vocab)  # row k masks logits row k
    for k in rows:
        states[k].matcher.fill_next_token_bitmask(bitmask, k)
        states[k].bits = bitmask[k].numpy()
        if remaining[k] <= states[k].grammar.reserve:
            forced[k] = _forced(states[k])
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
    return forced


def accept(states: Sequence[RowState | None], tokens: Sequence[int]) -> None:
    """Advance each constrained row's matcher by the token it took."""
    for s, t in zip(states, tokens):
        if s is None or s.done:
            continue
        if not s.matcher.accept_token(int(t)):
            raise RuntimeError(f"constrained decoding took token {int(t)} that its grammar refuses")
        s.steps += 1
        s.done = s.matcher.is_terminated()


def greedy_pick(logits: Any, states: Sequence[RowState | None], remaining: Sequence[int]) -> Any:
    """The greedy tokens of a batch (argmax of ``logits``, float32), each constrained row held to its grammar and
    closing when its budget runs short; the matchers advance by the chosen tokens."""
    import torch

    forced = mask_rows(logits, states, remaining)
    tokens = logits.argmax(-1)
    if any(f is not None for f in forced):
        tokens = tokens.clone()
        for k, f in enumerate(forced):
            if f is not None:
                tokens[k] = f
    accept(states, tokens.tolist())
    return tokens.to(torch.long)


class Processor:
    """A transformers logits processor for ``generate``: each row's grammar applied, closing rows forced, and, for
    sampling, the temperature and top-p applied after the mask (so top-p never keeps only refused tokens);
    ``generate`` then samples with its own warpers off."""

    def __init__(self, states: Sequence[RowState | None], prompt_width: int, max_new: int, temperature: float,
                 top_p: float):
        self.states, self.width, self.max_new = list(states), prompt_width, max_new
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        step = input_ids.shape[1] - self.width
        if step > 0:
            accept(self.states, input_ids[:, -1].tolist())
        scores = scores.float()
        forced = mask_rows(scores, self.states, [self.max_new - step] * len(self.states))
        for k, f in enumerate(forced):
            if f is not None:
                scores[k] = float("-inf")
                scores[k, f] = 0.0
        if self.temperature > 0:
            scores = scores / self.temperature
            if self.top_p < 1.0:
                ordered, order = torch.sort(scores, descending=True, dim=-1)
                cum = ordered.softmax(-1).cumsum(-1)
                drop = cum - ordered.softmax(-1) > self.top_p  # keep the tokens that reach top_p, at least one
                scores = scores.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        return scores


def _forced(state: RowState) -> int | None:
    """The token a closing row takes: the grammar's forced text, else the first allowed closer, else None."""
    g = state.grammar
    text = state.matcher.find_jump_forward_string()
    if text:
        ids = g.encode(text)
        if ids and _allowed(state.bits, ids[0]):
            return ids[0]
    return next((t for t in g.closers if _allowed(state.bits, t)), None)


def _allowed(bits: Any, token: int) -> bool:
    return bool((int(bits[token >> 5]) >> (token & 31)) & 1)


def _first_allowed(bits: Any, vocab: int) -> int:
    return next(t for t in range(vocab) if _allowed(bits, t))
