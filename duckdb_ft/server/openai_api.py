"""The OpenAI-compatible API: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``.

A request is parsed (400 for bad JSON or a bad field), its token checked (401), its prompt bounded (400), given a
place in the queue (429 full, 503 stopping), its model checked as the session's role sees it (404, one message for
"does not exist" and "no USAGE"), then answered by COMPLETE's path (:mod:`.generation`), whole or streamed as
server-sent events. ``temperature`` defaults to 0 (COMPLETE's greedy default), ``n`` must be 1.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..errors import (FtError, Interrupted, InvalidArgument, ModelLoadError, PermissionDenied, QueueFull,
                      RequestTimeout)
from ..ml.schema import parse_response_format
from ..options import CompleteOptions
from ..surface import router as sql_router
from . import generation, streaming
from .bounds import Refused, check_prompt
from .context import State, caller, in_thread, state_of
from .monitoring import UNKNOWN
from . import auth
from .auth import session

api = APIRouter()

#: OpenAI fields duckdb-ft cannot honour: refused (400) unless left at the value that changes nothing.
UNSUPPORTED = {"frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "logit_bias": None,
               "tools": None, "tool_choice": None, "functions": None, "function_call": None, "top_logprobs": None,
               "best_of": 1, "echo": False, "suffix": None}
CUT = "The server is shutting down: this request was cut at the end of its grace period; retry after it restarts."
MESSAGE_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@api.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    identity = await caller(request)
    state = state_of(request)

    def models() -> list[dict[str, Any]]:
        with session(state.engine, identity) as s:
            return models_for(s)

    return JSONResponse({"object": "list", "data": await in_thread(models)})


def models_for(s: Any) -> list[dict[str, Any]]:
    """The models the session's role may complete with, as the SQL surface lists them: SHOW BASE MODELS (built-in
    and registered ones it has USAGE on) and SHOW MODELS (fine-tuned models with USAGE: ``name`` and each
    ``name@version``)."""
    out = [streaming.model_entry(r["name"], r["created_on"], "duckdb-ft")
           for r in sql_router.run(s, None, "SHOW BASE MODELS").to_pylist()]
    for m in sql_router.run(s, None, "SHOW MODELS").to_pylist():
        name = m["name"] if m["schema_name"] == "main" else f"{m['schema_name']}.{m['name']}"
        out.append(streaming.model_entry(name, m["created_on"], m["owner"] or "duckdb-ft"))
        for v in sql_router.run(s, None, f"SHOW VERSIONS IN MODEL {m['schema_name']}.{m['name']}").to_pylist():
            out.append(streaming.model_entry(f"{name}@{v['name']}", v["created_on"], m["owner"] or "duckdb-ft"))
    return out


@api.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Any:
    return await _complete(request, chat=True)


@api.post("/v1/completions")
async def completions(request: Request) -> Any:
    return await _complete(request, chat=False)


async def _complete(request: Request, chat: bool) -> Any:
    state = state_of(request)
    endpoint = "/v1/chat/completions" if chat else "/v1/completions"
    arrived = time.perf_counter()
    model = UNKNOWN
    try:
        identity = await caller(request)
        body = parse_body(await request.body())
        req, stream, include_usage = parse(body, chat)
        check_prompt(req.messages, state.max_prompt_chars)
        state.queue.enter()
    except (Refused, auth.Unauthenticated) as e:
        state.metrics.requests.labels(endpoint, model, str(getattr(e, "status", 401))).inc()
        raise
    call = _Call(state, identity, req, endpoint, arrived)
    try:
        await in_thread(call.check)
    except BaseException as e:
        call.finish("404" if isinstance(e, generation.ModelUnavailable) else str(getattr(e, "status", 500)))
        raise
    if stream:
        return await call.stream(chat, include_usage)
    answer = await call.run(request)
    return JSONResponse(streaming.completion(chat, streaming.new_id(chat), req.model, answer))


class _Call:
    """One admitted generation request: its session, its place in the queue, its metrics."""

    def __init__(self, state: State, identity: Any, req: generation.Request, endpoint: str, arrived: float):
        self.state, self.identity, self.req, self.endpoint, self.arrived = state, identity, req, endpoint, arrived
        self._session_cm: Any = None
        self.session: Any = None
        self.done = False
        self.cancel = threading.Event()  # set when the client left or the stop's deadline passed: the row is freed
        self.model = UNKNOWN
        self.status = "500"
        self.first: float | None = None

    def check(self) -> None:
        """Blocking: the request's session opened, its model checked (404 before anything else)."""
        self._session_cm = session(self.state.engine, self.identity)
        self.session = self._session_cm.__enter__()
        try:
            generation.check_model(self.state.engine, self.session, self.req.model)
        except ModelLoadError:  # it exists, but its files do not load: nothing of them (paths) to the client
            raise Refused(503, f"The model `{self.req.model}` could not be loaded; the administrator can load it "
                               "with SELECT complete(...) to see why.", "model_unavailable", "server_error") from None  # 404 before anything else
        self.model = self.req.model

    def generate(self, on_text: Any = None) -> generation.Answer:
        """Blocking: the answer, the metrics of a success, errors as :class:`Refused` (400, 429, 499, 504)."""
        def text(piece: str) -> None:
            if self.first is None:
                self.first = time.perf_counter()
                self.state.metrics.first_token.labels(self.model).observe(self.first - self.arrived)
            if on_text is not None:
                on_text(piece)

        try:
            answer = generation.complete(self.state.engine, self.session, self.req, text,
                                         cancelled=self.cancel.is_set, loops=self.state.loops,
                                         timeout=self.state.request_timeout)
        except PermissionDenied as e:  # a role limit (ALTER ROLE ... SET): not the model's USAGE, checked before
            raise Refused(429, str(e), "role_limit", "rate_limit_error") from None
        except QueueFull as e:
            raise Refused(429, str(e), "queue_full", "rate_limit_error") from None
        except InvalidArgument as e:
            raise Refused(400, str(e), "invalid_request") from None
        except Interrupted:
            raise Refused(499, "The request was cancelled.", "cancelled", "server_error") from None
        except RequestTimeout:
            raise Refused(504, f"The answer took longer than this server's limit of {self.state.request_timeout:g} s "
                               "(duckdb-ft serve --request-timeout): ask for fewer tokens, or retry later.",
                          "timeout", "server_error") from None
        if self.first is None:  # an empty answer: its first (and last) moment is now
            self.state.metrics.first_token.labels(self.model).observe(time.perf_counter() - self.arrived)
        self.state.metrics.prompt_tokens.labels(self.model).inc(answer.prompt_tokens)
        self.state.metrics.completion_tokens.labels(self.model).inc(answer.completion_tokens)
        self.status = "200"
        return answer

    def finish(self, status: str | None = None) -> None:
        """Once: the session forgotten, the queue's place freed, the request counted."""
        if self.done:
            return
        self.done = True
        if self._session_cm is not None:
            self._session_cm.__exit__(None, None, None)
        self.state.queue.leave()
        self.state.metrics.requests.labels(self.endpoint, self.model, status or self.status).inc()

    def start(self) -> asyncio.Queue:
        """Generate on a thread of its own; its events ("text", piece), then ("done", answer) or ("error", e) come
        on the returned queue. The request's place in the queue is held until the generation ends."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def put(item: tuple) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the loop closed: the server stopped
                pass

        def work() -> None:
            try:
                cut = self.state.cut_at()
                if cut is not None and time.monotonic() >= cut:  # waited past the stop's deadline: not begun
                    raise Refused(503, CUT, "server_shutting_down", "server_error")
                put(("done", self.generate(lambda piece: put(("text", piece)))))
            except BaseException as e:  # noqa: BLE001 - handed to the request
                self.status = str(e.status) if isinstance(e, Refused) else "500"
                put(("error", e))
            finally:
                self.finish()

        threading.Thread(target=work, name="duckdb-ft-generation", daemon=True).start()
        return events

    async def run(self, http: Request) -> generation.Answer:
        """The whole answer (errors raised: Refused is 400/429/503); a client that leaves cancels it."""
        events = self.start()
        try:
            while True:
                kind, value = await self._next(events)
                if kind == "done":
                    return value
                if kind == "error":
                    raise value
                if await http.is_disconnected():
                    raise Refused(499, "The client went away.", "cancelled", "server_error")
        except BaseException:
            self.cancel.set()
            raise

    async def stream(self, chat: bool, include_usage: bool) -> Any:
        """The answer as server-sent events; an error before the first text is a plain JSON error response."""
        events = self.start()
        try:
            first = await self._next(events)
        except BaseException:
            self.cancel.set()
            raise
        if first[0] == "error":
            self.cancel.set()
            raise first[1]
        id_, model = streaming.new_id(chat), self.req.model

        async def body() -> Any:
            try:
                async for piece in self._events(chat, id_, model, first, events, include_usage):
                    yield piece
            finally:  # the stream ended, or its client left (the server cancels this generator): free the row
                self.cancel.set()

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def _events(self, chat: bool, id_: str, model: str, first: tuple, events: asyncio.Queue,
                      include_usage: bool) -> Any:
        """The server-sent events of a stream, from its first event on."""
        item = first
        if chat:
            yield streaming.chunk(chat, id_, model, role=True)
        while True:
            kind, value = item
            if kind == "text":
                yield streaming.chunk(chat, id_, model, text=value)
            elif kind == "done":
                yield streaming.chunk(chat, id_, model, finish_reason=value.finish_reason)
                if include_usage:
                    yield streaming.chunk(chat, id_, model, usage_of=value)
                yield streaming.DONE
                return
            else:
                status = getattr(value, "status", 500)
                yield streaming.event(streaming.error(
                    str(value) if status == 503 else "The server failed while generating this answer.",
                    "server_error", "server_shutting_down" if status == 503 else None))
                return
            item = await self._next(events)

    async def _next(self, events: asyncio.Queue) -> tuple:
        """The next event; once the server's grace deadline has passed, an error event: the answer is cut."""
        while True:
            cut = self.state.cut_at()
            wait = 0.25 if cut is None else cut - time.monotonic()
            if wait <= 0:
                self.cancel.set()
                return "error", Refused(503, CUT, "server_shutting_down", "server_error")
            try:
                return await asyncio.wait_for(events.get(), timeout=min(wait, 0.25))
            except asyncio.TimeoutError:
                continue


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" ({e.msg} at position {e.pos})" if isinstance(e, json.JSONDecodeError) else ""
        raise Refused(400, f"The request body is not valid JSON{where}.", "invalid_json") from None
    if not isinstance(body, dict):
        raise Refused(400, "The request body must be a JSON object.", "invalid_json")
    return body


def parse(body: dict[str, Any], chat: bool) -> tuple[generation.Request, bool, bool]:
    """A completion request's fields: (the request, stream, include_usage). Raises :class:`Refused` (400)."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model", "'model' is required: a model name, as GET /v1/models lists them")
    for name, neutral in UNSUPPORTED.items():
        if name in body and body[name] not in (neutral, None):
            raise _bad(name, f"'{name}' is not supported by duckdb-ft serve")
    messages = _messages(body.get("messages")) if chat else [{"role": "user", "content": _prompt(body.get("prompt"))}]
    if body.get("n", 1) not in (1, None):
        raise _bad("n", "'n' must be 1: ask again for another answer")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise _bad("seed", "'seed' must be an integer")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise _bad("stop", "'stop' must be a string or a list of at most 4 strings")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    req = generation.Request(model=model.strip(), messages=messages, stop=stop, max_tokens=max_tokens, seed=seed,
                             response_format=response_format(body.get("response_format")))
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            setattr(req, name, body[name])
    try:
        CompleteOptions.parse(req.options())  # COMPLETE's own checks of temperature, top_p, max_tokens
    except FtError as e:
        raise _bad(None, str(e)) from None
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _bad("stream", "'stream' must be true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options", "'stream_options' must be an object such as {\"include_usage\": true}")
    return req, stream, bool(options.get("include_usage"))


def response_format(raw: Any) -> dict | None:
    """OpenAI's ``response_format`` as COMPLETE's: ``{"type": "text"}`` none; ``{"type": "json_object"}`` any JSON
    object; ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`` that schema. The answer is
    constrained to it (AI_COMPLETE's constrained decoding). Raises :class:`Refused` (400)."""
    if raw is None or raw == {"type": "text"}:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "json_object":
        schema: Any = {"type": "object"}
    elif kind == "json_schema" and isinstance(raw.get("json_schema"), dict) \
            and isinstance(raw["json_schema"].get("schema"), dict):
        schema = raw["json_schema"]["schema"]
    else:
        raise _bad("response_format", "'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} "
                                      "or {\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}")
    try:
        parse_response_format({"type": "json", "schema": schema})
    except FtError as e:
        raise _bad("response_format", str(e)) from None
    return {"type": "json", "schema": schema}


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "'messages' must be a non-empty array of {\"role\": ..., \"content\": ...} objects")
    out = []
    for i, m in enumerate(raw):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in MESSAGE_ROLES:
            raise _bad("messages", f"message {i} has role {role!r}; valid roles: {', '.join(MESSAGE_ROLES)}")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise _bad("messages", f"message {i}: only text content parts are supported")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise _bad("messages", f"message {i} needs a string 'content'")
        out.append({"role": MESSAGE_ROLES[role], "content": content})
    if out[-1]["role"] == "assistant":
        raise _bad("messages", "the last message must be from the user (or system), not the assistant")
    return out


def _prompt(raw: Any) -> str:
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    if not isinstance(raw, str):
        raise _bad("prompt", "'prompt' must be a string (one prompt per request)")
    return raw


def _bad(param: str | None, message: str) -> Refused:
    return Refused(400, message, "invalid_request", param=param)
