"""The FastAPI application of ``duckdb-ft serve``: the /v1 and /api/v2 routes, ``GET /health`` and ``GET /metrics``,
the middleware (access log outermost, then the body limit) and the one translation of errors into HTTP answers:
OpenAI's error object under /v1, Snowflake's under /api/v2."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from . import openai_api, sql_api, streaming
from .auth import Unauthenticated
from .bounds import BodyLimit, Refused
from .context import State, caller, in_thread
from .generation import ModelUnavailable
from .monitoring import AccessLog


def error_body(path: str, status: int, message: str, code: str | None = None, type_: str = "invalid_request_error",
               param: str | None = None) -> dict[str, Any]:
    """An error in the shape clients of ``path`` expect: Snowflake's under /api/v2, else OpenAI's."""
    if path.startswith("/api/"):
        return {"code": code or str(status), "message": message, "sqlState": "08004" if status == 401 else "42000",
                "errorType": "RequestError"}
    return streaming.error(message, type_, code, param)


def _raw_error(path: str, status: int, message: str) -> bytes:
    codes = {413: "request_too_large", 500: "internal_error"}
    return json.dumps(error_body(path, status, message, codes.get(status), "server_error" if status >= 500
                                 else "invalid_request_error")).encode()


def build(state: State) -> Any:
    """The ASGI application serving ``state``'s database."""
    app = FastAPI(title="duckdb-ft", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ft = state
    app.include_router(openai_api.api)
    app.include_router(sql_api.api)

    @app.exception_handler(Unauthenticated)
    async def unauthenticated(request: Request, e: Unauthenticated) -> JSONResponse:
        return JSONResponse(error_body(request.url.path, 401, str(e), "invalid_api_key"), status_code=401,
                            headers={"www-authenticate": "Bearer"})

    @app.exception_handler(ModelUnavailable)
    async def unavailable(request: Request, e: ModelUnavailable) -> JSONResponse:
        return JSONResponse(error_body(request.url.path, 404, str(e), "model_not_found", param="model"),
                            status_code=404)

    @app.exception_handler(Refused)
    async def refused(request: Request, e: Refused) -> JSONResponse:
        headers = {"retry-after": "1"} if e.status in (429, 503) else None
        return JSONResponse(error_body(request.url.path, e.status, str(e), e.code, e.type, e.param),
                            status_code=e.status, headers=headers)

    @app.exception_handler(404)
    async def no_route(request: Request, e: Any) -> JSONResponse:
        return JSONResponse(error_body(request.url.path, 404, f"No route {request.method} {request.url.path}.",
                                       "not_found"), status_code=404)

    @app.exception_handler(405)
    async def wrong_method(request: Request, e: Any) -> JSONResponse:
        return JSONResponse(error_body(request.url.path, 405, f"{request.method} is not allowed on "
                                                              f"{request.url.path}.", "method_not_allowed"),
                            status_code=405)

    @app.get("/health")
    async def health() -> JSONResponse:
        stopping = state.stopping is not None
        return JSONResponse({"status": "stopping" if stopping else "ok"}, status_code=503 if stopping else 200)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        identity = await caller(request)

        def allowed() -> None:  # the surface's own check: the metrics name every model and user's load
            from .auth import session

            with session(state.engine, identity) as s:
                s.checker().require_admin("reading /metrics")

        try:
            await in_thread(allowed)
        except Exception as e:  # noqa: BLE001 - PermissionDenied: 403
            return JSONResponse(error_body(request.url.path, 403, str(e), "permission_denied"), status_code=403)
        return Response(state.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return AccessLog(BodyLimit(app, state.max_body_bytes, _raw_error), state.metrics, _raw_error)
