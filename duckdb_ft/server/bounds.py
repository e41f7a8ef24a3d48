"""What one request may ask of the server: a bounded body (413), a bounded prompt (400 naming the limit), a place
in a bounded queue of generation requests (429 when it is full, 503 while the server stops), a bounded time (504)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

#: Defaults of ``duckdb-ft serve``'s --max-body-bytes, --max-prompt-chars, --max-queue and --request-timeout.
MAX_BODY_BYTES = 1 << 20
MAX_PROMPT_CHARS = 100_000
MAX_QUEUE = 64
REQUEST_TIMEOUT = 300.0


class Refused(Exception):
    """A request the server will not take: an HTTP status and an OpenAI error ``type`` and ``code``."""

    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error",
                 param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.type, self.param = status, code, type_, param


def check_prompt(messages: list[dict[str, str]], limit: int) -> None:
    """Raise 400 when the messages' text is longer than ``limit`` characters (the tokenizer never sees it)."""
    size = sum(len(m["content"]) for m in messages)
    if size > limit:
        raise Refused(400, f"The prompt has {size} characters, over this server's limit of {limit} characters "
                           "(duckdb-ft serve --max-prompt-chars): shorten it.", "prompt_too_long", param="messages")


@dataclass
class Queue:
    """Generation requests admitted and not finished (running or waiting for the model), at most ``limit``.

    A request's place is held until its generation ends, even if its client went away meanwhile (the work goes
    on until then); ``closing`` turns every new request away while the server stops.
    """

    limit: int = MAX_QUEUE
    depth: int = 0
    closing: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Condition()

    def enter(self) -> None:
        with self._lock:
            if self.closing:
                raise Refused(503, "The server is shutting down: retry against its next start.", "server_shutting_down",
                              "server_error")
            if self.depth >= self.limit:
                raise Refused(429, f"The server's queue is full ({self.limit} requests waiting or running): retry "
                                   "in a moment.", "queue_full", "rate_limit_error")
            self.depth += 1

    def leave(self) -> None:
        with self._lock:
            self.depth -= 1
            self._lock.notify_all()

    def drain(self, timeout: float) -> bool:
        """Refuse new requests; wait up to ``timeout`` seconds for the admitted ones; True if none is left."""
        with self._lock:
            self.closing = True
            return self._lock.wait_for(lambda: self.depth == 0, timeout=max(timeout, 0.0))


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before any route reads it."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES, error: Callable[[str, int, str], bytes] | None = None):
        self.app, self.limit = app, limit
        self.error = error or (lambda path, status, message: json.dumps({"error": {"message": message}}).encode())

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, send)
            return
        chunks, size = [], 0
        while True:  # read the (bounded) body here, then hand it on
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body, given = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict, send: Callable) -> None:
        message = (f"The request body is over this server's limit of {self.limit} bytes (duckdb-ft serve "
                   "--max-body-bytes).")
        body = self.error(scope.get("path", ""), 413, message)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
