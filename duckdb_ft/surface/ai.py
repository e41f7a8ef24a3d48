"""AI_COMPLETE, Snowflake's current completion function: ``ai_complete(model, prompt [, model_parameters
[, response_format [, show_details]]])``, run by COMPLETE's batched generation.

``model_parameters`` are COMPLETE's options (``temperature`` 0, ``top_p``, ``max_tokens``, ``dtype``);
``response_format`` (``{'type': 'json', 'schema': {...}}``, a STRUCT, MAP or JSON text) makes every answer JSON that
validates against the schema, by constrained decoding (``ml/constrain.py``); ``show_details`` returns Cortex's JSON
with ``choices``, ``created``, ``model``, ``usage`` (and ``structured_output`` with a response format). The usage
history counts these calls as ``AI_COMPLETE``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import InvalidArgument
from . import usage

if TYPE_CHECKING:
    from .engine import Engine, Session

FUNCTION = "AI_COMPLETE"


def ai_complete(engine: Engine, session: Session, models: Sequence[str | None], prompts: Sequence[str | None],
                parameters: Sequence[str | None], formats: Sequence[str | None],
                details: Sequence[str | None]) -> list[str | None]:
    """One chunk of AI_COMPLETE: the prompts arrive ``to_json``-encoded, the parameters and response formats as
    JSON (or NULL), ``show_details`` as 'true' / 'false' / NULL."""
    options = [_options(p, f) for p, f in zip(parameters, formats)]
    raw = usage.complete_and_record(engine, session, models, prompts, options, try_mode=False, function=FUNCTION)
    out: list[str | None] = []
    for r, d in zip(raw, details):
        if r is None or str(d).lower() == "true":
            out.append(r)
        else:
            out.append(json.loads(r)["choices"][0]["messages"])
    return out


def _options(parameters: str | None, response_format: str | None) -> str:
    """COMPLETE's options JSON from AI_COMPLETE's ``model_parameters`` and ``response_format``."""
    opts = _object(parameters, "model_parameters") or {}
    fmt = _decoded(response_format)
    if fmt is not None:
        if "response_format" in opts:
            raise InvalidArgument("response_format is given both as an argument and in model_parameters: give it once")
        opts["response_format"] = fmt
    return json.dumps(opts)


def _decoded(value: str | None) -> Any:
    """A ``to_json``-encoded argument: a STRUCT or MAP as its JSON, a string holding JSON text as that text's value."""
    if value is None:
        return None
    out = json.loads(value)
    if isinstance(out, str):
        try:
            out = json.loads(out)
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"'{out[:60]}' is not JSON ({e.msg} at position {e.pos})") from None
    return out


def _object(value: str | None, what: str) -> dict | None:
    out = _decoded(value)
    if out is not None and not isinstance(out, dict):
        raise InvalidArgument(f"{what} must be an object such as {{'temperature': 0.2, 'max_tokens': 64}}, "
                              f"got {json.dumps(out)[:80]}")
    return out
