"""OpenAI's response shapes: a chat completion and a text completion, their streamed chunks (server-sent events,
``data: {...}`` then ``data: [DONE]``), the ``usage`` object, the model list and the error object."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from .generation import Answer


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def usage(answer: Answer) -> dict[str, int]:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def completion(chat: bool, id_: str, model: str, answer: Answer) -> dict[str, Any]:
    """The whole answer: ``chat.completion`` or ``text_completion``."""
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": answer.text}, "logprobs": None,
                  "finish_reason": answer.finish_reason}
    else:
        choice = {"index": 0, "text": answer.text, "logprobs": None, "finish_reason": answer.finish_reason}
    return {"id": id_, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage(answer)}


def chunk(chat: bool, id_: str, model: str, *, text: str | None = None, role: bool = False,
          finish_reason: str | None = None, usage_of: Answer | None = None) -> str:
    """One server-sent event of a stream: a piece of text, the opening role (chat), the finish reason, or (with
    ``usage_of``) the last chunk, empty ``choices`` and the ``usage`` (``stream_options.include_usage``)."""
    if usage_of is not None:
        choices: list = []
    elif chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text is not None:
            delta["content"] = text
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    else:
        choices = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}]
    body: dict[str, Any] = {"id": id_, "object": "chat.completion.chunk" if chat else "text_completion",
                            "created": int(time.time()), "model": model, "choices": choices}
    if usage_of is not None:
        body["usage"] = usage(usage_of)
    return event(body)


def event(body: dict[str, Any] | str) -> str:
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"


DONE = event("[DONE]")


def error(message: str, type_: str = "invalid_request_error", code: str | None = None,
          param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def model_entry(name: str, created_ms: int | None, owner: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": (created_ms or 0) // 1000, "owned_by": owner}
