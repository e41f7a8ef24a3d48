"""An Ollama ``Modelfile`` for a GGUF export, so ``ollama create NAME -f Modelfile`` is the one step left.

``FROM`` the GGUF file (for an adapter: ``FROM`` the base model's GGUF and ``ADAPTER`` the adapter's), ``TEMPLATE``
the model's chat template in Ollama's Go-template syntax, and ``PARAMETER stop`` for each token COMPLETE stops at.

The chat template (Jinja, run by transformers) becomes a Go template by rendering, not by translating Jinja:
rendered with marker contents, it gives each role's text before and after a message's content, the text before a
conversation that does not open with a system message (SmolLM2's default system prompt), and the generation
prompt. The Go template lays those pieces out over ``.Messages``; it is written only if the pieces, put back
together, give the chat template's own text on sample conversations; otherwise the Modelfile has no ``TEMPLATE``
and Ollama falls back on the chat template stored in the GGUF file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")

#: Conversations the pieces must reproduce exactly (contents with newlines and spaces, every role, both openings).
SAMPLES = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Answer in SQL."}, {"role": "user", "content": "Count the orders.\nPlease."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": " Name a colour. "}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b\n\nc"}, {"role": "user", "content": "d"}],
]


@dataclass
class Pieces:
    """A chat template as text around each message: ``wrap[role] = (before, after)`` its content; ``opening``
    before a first message that is not a system message; ``generation`` after the last message."""

    wrap: dict[str, tuple[str, str]]
    opening: str
    generation: str

    def render(self, messages: list[dict[str, str]]) -> str:
        """What the Go template of :func:`go_template` renders for ``messages`` (the same logic, in Python)."""
        out = []
        for i, m in enumerate(messages):
            if i == 0 and m["role"] != "system":
                out.append(self.opening)
            before, after = self.wrap[m["role"]]
            out.append(before + m["content"] + after)
        return "".join(out) + self.generation


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _split(text: str, marker: str) -> tuple[str, str]:
    if text.count(marker) != 1:
        raise ValueError(marker)
    before, _, after = text.partition(marker)
    return before, after


def pieces(tokenizer: Any) -> Pieces | None:
    """The chat template of ``tokenizer`` as :class:`Pieces`, or None when it is not text around each message
    (the pieces do not give back its own rendering of :data:`SAMPLES`)."""
    u1, a1, u2, s0 = "\x02U1\x03", "\x02A1\x03", "\x02U2\x03", "\x02S0\x03"
    try:
        p1 = _render(tokenizer, [{"role": "user", "content": u1}], False)
        p2 = _render(tokenizer, [{"role": "user", "content": u1}, {"role": "assistant", "content": a1}], False)
        p3 = _render(tokenizer, [{"role": "user", "content": u1}, {"role": "assistant", "content": a1},
                                 {"role": "user", "content": u2}], False)
        ps = _render(tokenizer, [{"role": "system", "content": s0}, {"role": "user", "content": u1}], False)
        if not (p3.startswith(p2) and p2.startswith(p1)):
            return None
        user = _split(p3[len(p2):], u2)
        assistant = _split(p2[len(p1):], a1)
        block = user[0] + u1 + user[1]
        if not (p1.endswith(block) and ps.endswith(block)):
            return None
        system = _split(ps[:-len(block)], s0)
        generation = _render(tokenizer, [{"role": "user", "content": u1}], True)[len(p1):]
        found = Pieces({"system": system, "user": user, "assistant": assistant}, p1[:-len(block)], generation)
        if any(found.render(m) != _render(tokenizer, m, True) for m in SAMPLES):
            return None
    except Exception:  # noqa: BLE001 - a template that raises on a sample (strict alternation, tools): no TEMPLATE
        return None
    return found


def _literal(text: str) -> str:
    """``text`` as Go template text: verbatim, but ``{{`` (which would open an action) as a string action."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(p: Pieces) -> str:
    """:class:`Pieces` as an Ollama (Go) template over ``.Messages`` (``.Role``, ``.Content``). No whitespace
    trimming (``{{-``): every newline of the pieces is kept as the chat template writes it."""
    out = ["{{ range $i, $_ := .Messages }}"]
    if p.opening:
        out.append(f'{{{{ if and (eq $i 0) (ne .Role "system") }}}}{_literal(p.opening)}{{{{ end }}}}')
    for n, role in enumerate(ROLES):
        before, after = p.wrap[role]
        out.append(f'{{{{ {"if" if n == 0 else "else if"} eq .Role "{role}" }}}}'
                   f"{_literal(before)}{{{{ .Content }}}}{_literal(after)}")
    out.append("{{ end }}{{ end }}")
    out.append(_literal(p.generation))
    return "".join(out)


def stop_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    """The tokens of ``ids`` (COMPLETE's stop ids) as text, each once."""
    out: list[str] = []
    for token in tokenizer.convert_ids_to_tokens(list(ids)):
        if token and token not in out:
            out.append(token)
    return out


def modelfile(gguf: str, tokenizer: Any, stop_ids: list[int], title: str, adapter: str | None = None,
              base_hint: str | None = None) -> str:
    """The Modelfile's text. ``gguf``: the model's file (relative to the Modelfile), or with ``adapter`` the base
    model's file; ``base_hint``: how to make that base file (a comment)."""
    lines = [f"# Ollama Modelfile for {title}, written by duckdb-ft export: ollama create NAME -f THIS_FILE"]
    if base_hint:
        lines.append(f"# FROM is the base model's GGUF file, to be written beside this file: {base_hint}")
    lines.append(f"FROM {gguf}")
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    found = pieces(tokenizer) if getattr(tokenizer, "chat_template", None) else None
    template = go_template(found) if found is not None else None
    if template is not None and '"""' not in template:
        lines.append(f'TEMPLATE """{template}"""')
    else:
        lines.append("# No TEMPLATE: the chat template is not text around each message; Ollama reads the one in "
                     "the GGUF file")
    for token in stop_tokens(tokenizer, stop_ids):
        lines.append(f"PARAMETER stop {json.dumps(token, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"
