"""Two AISQL functions on COMPLETE's generation, their answers held to their shape by constrained decoding:
``ai_classify(input, categories [, config])`` returns ``{"labels": [...]}`` with labels only from ``categories``
(strings, or ``{label, description}``; ``config``: ``output_mode`` ``'single'`` (default) or ``'multi'``,
``task_description``, and duckdb-ft's ``model``), and ``ai_filter(predicate [, input] [, model => ...])`` returns a
BOOLEAN from an answer constrained to yes or no. The model defaults to the built-in base model. The usage history
counts the calls as AI_CLASSIFY and AI_FILTER.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import InvalidArgument
from . import usage
from .default_model import default_model

if TYPE_CHECKING:
    from .engine import Engine, Session

CLASSIFY_OPTIONS = {"output_mode", "task_description", "model"}
_YES_NO = {"type": "json", "schema": {"enum": ["yes", "no"]}}


def ai_filter(engine: Engine, session: Session, predicates: Sequence[str | None], inputs: Sequence[str | None],
              models: Sequence[str | None]) -> list[str | None]:
    """'true' / 'false' per row (NULL where the predicate is NULL)."""
    prompts = [None if p is None else _user(f"{p}\n\n{i}\n\nAnswer yes or no." if i is not None
                                            else f"{p}\n\nAnswer yes or no.") for p, i in zip(predicates, inputs)]
    default = default_model(engine)
    names = [m or default for m in models]
    options = json.dumps({"max_tokens": 16, "response_format": _YES_NO})
    raw = usage.complete_and_record(engine, session, names, prompts, [options] * len(prompts), try_mode=False,
                                    function="AI_FILTER")
    return [None if r is None else str(_answer(r) == "yes").lower() for r in raw]


def ai_classify(engine: Engine, session: Session, inputs: Sequence[str | None], categories: Sequence[str | None],
                configs: Sequence[str | None]) -> list[str | None]:
    """``{"labels": [...]}`` as JSON text per row (NULL where the input or the categories are NULL)."""
    prompts, options, names = [], [], []
    default = default_model(engine)
    for text, cats, conf in zip(inputs, categories, configs):
        config = _config(conf)
        names.append(config.get("model") or default)
        if text is None or cats is None:
            prompts.append(None)
            options.append(None)
            continue
        labels, lines = _categories(json.loads(cats))
        multi = config.get("output_mode", "single") == "multi"
        task = config.get("task_description")
        prompts.append(_user((f"{task}\n" if task else "") + "Classify the text into "
                             + ("any of" if multi else "one of") + " these categories:\n" + "\n".join(lines)
                             + f"\n\nText: {text}"))
        items = {"type": "array", "items": {"enum": labels}, "minItems": 0 if multi else 1,
                 "maxItems": len(labels) if multi else 1}
        schema = {"type": "object", "properties": {"labels": items}, "required": ["labels"]}
        options.append(json.dumps({"max_tokens": 32 + 12 * (len(labels) if multi else 1),
                                   "response_format": {"type": "json", "schema": schema}}))
    raw = usage.complete_and_record(engine, session, names, prompts, options, try_mode=False,
                                    function="AI_CLASSIFY")
    return [None if r is None else json.dumps(json.loads(_answer_text(r))) for r in raw]


def _user(text: str) -> str:
    """A prompt as COMPLETE's encoded messages (a user turn, whatever the text starts with)."""
    return json.dumps([{"role": "user", "content": text}])


def _answer_text(raw: str) -> str:
    return json.loads(raw)["choices"][0]["messages"]


def _answer(raw: str) -> Any:
    return json.loads(_answer_text(raw))


def _config(text: str | None) -> dict:
    value = json.loads(text) if text is not None else None
    if isinstance(value, str):
        value = json.loads(value)
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - CLASSIFY_OPTIONS:
        raise InvalidArgument(f"AI_CLASSIFY config takes {', '.join(sorted(CLASSIFY_OPTIONS))}, got "
                              f"{json.dumps(value)[:80]}")
    if value.get("output_mode", "single") not in ("single", "multi"):
        raise InvalidArgument("AI_CLASSIFY output_mode must be 'single' or 'multi'")
    return value


def _categories(value: Any) -> tuple[list[str], list[str]]:
    """The labels and the prompt's lines for them, from strings or ``{label, description}`` objects."""
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list) or not value:
        raise InvalidArgument("AI_CLASSIFY categories must be a non-empty list of labels or {label, description}")
    labels, lines = [], []
    for c in value:
        label, description = (c, None) if isinstance(c, str) else (
            (c.get("label"), c.get("description")) if isinstance(c, dict) else (None, None))
        if not isinstance(label, str) or not label:
            raise InvalidArgument(f"AI_CLASSIFY category {json.dumps(c)[:60]} is not a label or {{label, description}}")
        labels.append(label)
        lines.append(f"- {label}" + (f": {description}" if description else ""))
    if len(set(labels)) != len(labels):
        raise InvalidArgument("AI_CLASSIFY categories repeat a label")
    return labels, lines
