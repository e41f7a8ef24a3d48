"""(prompt, completion) pairs in the chat template, tokenized in batches: the template rendered once, not per pair.

Training and FINETUNE 'ESTIMATE' count the prompt part (the conversation up to the generation prompt) and the
completion part (the rest of the whole conversation) of each pair, each tokenized on its own (see
:func:`duckdb_ft.ml.data.encode_pairs`). Rendering the Jinja template costs about 40 us a call, two calls a pair:
more than the tokenizing. A template that inserts the message contents verbatim renders any pair as
``A + prompt + B`` and ``C + completion + D`` for constant texts A, B, C, D, found by rendering it once with
sentinel contents. The fast tokenizer splits its text at added (special) tokens before anything else, so the
constant text up to A's last special token and from B's first is tokenized once; per pair only the content and the
constant text around it up to those special tokens are tokenized, in batches.

That is used only when it gives exactly what ``apply_chat_template`` + the tokenizer give: on probe contents
(empty, whitespace around and inside, the tokenizer's special tokens, Jinja syntax, non-ASCII text) at plan time,
and on the first pair of every batch as it runs. Otherwise (a template that trims, rewrites or branches on the
contents, a tokenizer with stripping special tokens) every pair is rendered by Jinja, as before.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import InvalidArgument

SENTINELS = ("\u27e6duckdb-ft prompt\u27e7", "\u27e6duckdb-ft completion\u27e7")
PROBES = ("", " ", "\n", "x", "  padded  ", "\n\nlines\n\n", "\ttab\t", "What is 2+2? Answer: 4.", "trailing ",
          " leading", "{{ messages }} {% if %} {# c #}", "'quote\" \\back", "\u00e9\u6f22\u5b57 \U0001f642 \u00a0nbsp",
          "<think>a</think>b", "</think>", "\r\n crlf \r\n")


def render_parts(tokenizer: Any, prompt: str, completion: str) -> tuple[str, str]:
    """The prompt part and the completion part of one pair's conversation, rendered by the chat template."""
    user = [{"role": "user", "content": prompt}]
    p = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": completion}], tokenize=False)
    if not full.startswith(p):
        raise InvalidArgument("the base model's chat template does not extend the prompt; cannot mask the prompt")
    return p, full[len(p):]


@dataclass
class _Around:
    """A part's text around its content: ``head`` + (``lead`` + content + ``trail``) + ``tail``, where ``head``
    ends and ``tail`` starts at a special token, so they are tokenized once (``head_ids``, ``tail_ids``)."""

    lead: str
    trail: str
    head_ids: list[int]
    tail_ids: list[int]


class PairEncoder:
    """Token ids (or counts) of pairs' prompt and completion parts, in batches; see the module docstring."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._batch = (lambda texts: backend.encode_batch_fast(texts, add_special_tokens=False)) if backend else None
        self.plan: tuple[_Around, _Around] | None = None
        try:
            self.plan = self._plan()
        except InvalidArgument:
            raise
        except Exception:  # a template the sentinels cannot render: the Jinja path renders (and reports) it
            self.plan = None

    def _ids(self, texts: list[str]) -> list[list[int]]:
        if self._batch is not None:
            return [e.ids for e in self._batch(texts)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def _plan(self) -> tuple[_Around, _Around] | None:
        if self._batch is None:
            return None
        sp, sc = SENTINELS
        p, c = render_parts(self.tokenizer, sp, sc)
        if p.count(sp) != 1 or c.count(sc) != 1 or sp in c or sc in p:
            return None
        plan = (self._around(*p.split(sp)), self._around(*c.split(sc)))
        self.plan = plan
        specials = [t for t in self._added() if t]
        probes = list(PROBES) + [f"{t}" for t in specials[:8]] + [f" a{t}b " for t in specials[:8]]
        pairs = [(x, y) for x in probes for y in (probes[len(probes) - 1 - k] for k in range(2))]
        pairs += [(x, x) for x in probes]
        return plan if self._agrees(pairs, check_text=True) else None

    def _added(self) -> list[str]:
        decoder = getattr(self.tokenizer, "added_tokens_decoder", None) or {}
        return [getattr(t, "content", str(t)) for t in decoder.values()]

    def _around(self, before: str, after: str) -> _Around:
        added = self._added()
        cut = max((before.rfind(t) + len(t) for t in added if t and t in before), default=0)
        start = min((after.find(t) for t in added if t and t in after), default=len(after))
        head, tail = before[:cut], after[start:]
        head_ids, tail_ids = self._ids([head, tail]) if head or tail else ([], [])
        return _Around(before[cut:], after[:start], head_ids if head else [], tail_ids if tail else [])

    def _agrees(self, pairs: Sequence[tuple[str, str]], check_text: bool = False) -> bool:
        """Whether the planned encoding equals the Jinja path's on ``pairs`` (and, at plan time, the texts)."""
        rendered = [render_parts(self.tokenizer, p, c) for p, c in pairs]
        if check_text:
            ap, ac = self._texts_sentinel()
            for (p, c), (rp, rc) in zip(pairs, rendered):
                if rp != ap[0] + p + ap[1] or rc != ac[0] + c + ac[1]:
                    return False
        want_p = self._ids([r[0] for r in rendered])
        want_c = self._ids([r[1] for r in rendered])
        got_p, got_c = self._fast([p for p, _ in pairs], [c for _, c in pairs])
        return want_p == got_p and want_c == got_c

    def _texts_sentinel(self) -> tuple[tuple[str, str], tuple[str, str]]:
        p, c = render_parts(self.tokenizer, *SENTINELS)
        return tuple(p.split(SENTINELS[0])), tuple(c.split(SENTINELS[1]))  # type: ignore[return-value]

    def _fast(self, prompts: list[str], completions: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        ap, ac = self.plan  # type: ignore[misc]
        mid_p = self._ids([ap.lead + p + ap.trail for p in prompts])
        mid_c = self._ids([ac.lead + c + ac.trail for c in completions])
        return ([ap.head_ids + m + ap.tail_ids for m in mid_p], [ac.head_ids + m + ac.tail_ids for m in mid_c])

    def _slow(self, prompts: list[str], completions: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        rendered = [render_parts(self.tokenizer, p, c) for p, c in zip(prompts, completions)]
        return self._ids([r[0] for r in rendered]), self._ids([r[1] for r in rendered])

    def _checked(self, prompts: list[str], completions: list[str]) -> bool:
        """The plan still holds on this batch's first pair (else it is dropped for the Jinja path)."""
        if self.plan is not None and prompts and not self._agrees([(prompts[0], completions[0])]):
            self.plan = None
        return self.plan is not None

    def encode(self, prompts: list[str], completions: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids of each pair's prompt part and completion part, before any truncation."""
        if not prompts:
            return [], []
        if self._checked(prompts, completions):
            return self._fast(prompts, completions)
        return self._slow(prompts, completions)

    def lengths(self, prompts: list[str], completions: list[str]) -> tuple[list[int], list[int]]:
        """Token counts of each pair's prompt part and completion part (as ``encode``'s lengths, cheaper)."""
        if not prompts:
            return [], []
        if not self._checked(prompts, completions):
            p, c = self._slow(prompts, completions)
            return [len(x) for x in p], [len(x) for x in c]
        ap, ac = self.plan  # type: ignore[misc]
        np_, nc = len(ap.head_ids) + len(ap.tail_ids), len(ac.head_ids) + len(ac.tail_ids)
        return ([np_ + len(e) for e in self._batch([ap.lead + p + ap.trail for p in prompts])],  # type: ignore[misc]
                [nc + len(e) for e in self._batch([ac.lead + c + ac.trail for c in completions])])  # type: ignore


#: Each live tokenizer's encoder: held weakly, it goes with its tokenizer.
_ENCODERS: "weakref.WeakKeyDictionary[Any, PairEncoder]" = weakref.WeakKeyDictionary()


def encoder(tokenizer: Any) -> PairEncoder:
    """The tokenizer's PairEncoder, planned once per tokenizer object."""
    try:
        found = _ENCODERS.get(tokenizer)
    except TypeError:  # not weakly referenceable: plan each time
        return PairEncoder(tokenizer)
    if found is None:
        found = _ENCODERS[tokenizer] = PairEncoder(tokenizer)
    return found
