"""One HTTP request's completion, through COMPLETE's surface path for a single request
(``surface/usage.complete_request``): the same model resolution and USAGE check, the same options and role limits,
the same usage history (function ``COMPLETE``, the session's role), generated in the model's decode loop that
concurrent requests share (``ml/batcher.py``). A greedy answer is COMPLETE's, token for token.

:class:`Request` is what the OpenAI endpoints parsed; :func:`check_model` tells an unknown model from a usable one
(one error for "does not exist" and "no USAGE"); :func:`complete` runs it, blocking (call it from a worker thread);
``on_text`` receives the answer's text as it is generated (up to a stop sequence, which the decode loop ends
the row at).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..errors import InvalidArgument, NotFound, PermissionDenied
from ..surface import usage

if TYPE_CHECKING:
    from ..surface.engine import Engine, Session


class ModelUnavailable(Exception):
    """The model does not exist, or the session's role may not use it: one message for both (HTTP 404)."""

    def __init__(self, model: str):
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.")


@dataclass
class Request:
    """A completion request: chat messages and COMPLETE's options, with OpenAI's ``stop`` sequences and ``seed``."""

    model: str
    messages: list[dict[str, str]]
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    #: COMPLETE's response_format ({"type": "json", "schema": {...}}), from OpenAI's (openai_api.response_format).
    response_format: dict | None = None

    def options(self) -> str:
        """COMPLETE's options JSON for this request."""
        opts: dict = {"temperature": self.temperature, "top_p": self.top_p}
        if self.max_tokens is not None:
            opts["max_tokens"] = self.max_tokens
        if self.response_format is not None:
            opts["response_format"] = self.response_format
        return json.dumps(opts)


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (an end token or a stop sequence) or "length" (max_tokens reached)


def check_model(engine: Engine, session: Session, model: str) -> None:
    """Raise :class:`ModelUnavailable` unless ``session`` may complete with ``model`` (it is loaded here, once).

    The surface's own resolution decides (``Engine.resolve_model``: a fine-tuned model needs USAGE on it, a base
    model must be built in, or registered with USAGE); its errors, which differ, all become the one 404.
    """
    try:
        engine.resolve_model(session, model)
    except (NotFound, PermissionDenied, InvalidArgument):
        raise ModelUnavailable(model) from None


def complete(engine: Engine, session: Session, request: Request, on_text: Callable[[str], None] | None = None, *,
             cancelled: Callable[[], bool] | None = None, loops: Any = None, timeout: float | None = None) -> Answer:
    """Generate ``request``'s answer as COMPLETE does, its usage recorded as COMPLETE's; blocking.

    Raises:
        InvalidArgument: the options or the prompt are not valid for this model (too long for its context, ...).
        PermissionDenied: a role limit refuses the call.
        QueueFull: the model's decode loop has too many requests waiting.
        Interrupted: ``cancelled()`` became true (the client left, the server stops).
        RequestTimeout: it took longer than ``timeout`` seconds, waiting included.
    """
    result = usage.complete_request(engine, session, request.model, request.messages, request.options(),
                                    on_text=on_text, seed=request.seed, stop=request.stop, loops=loops,
                                    cancelled=cancelled, timeout=timeout)
    return Answer(result.text, result.prompt_tokens, result.completion_tokens, result.finish_reason)
