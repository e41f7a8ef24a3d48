"""SQL over HTTP in the shape of Snowflake's SQL API: ``POST /api/v2/statements`` runs one statement as the
token's user, exactly as ``duckdb_ft.connect(path, user=...)`` would (the same surface router and authorizer), and
``POST /api/v2/statements/{handle}/cancel`` stops a running one (the caller's own).

Request: ``{"statement": "...", "bindings": {"1": {"type": "TEXT", "value": "x"}, ...}}`` (``?requestId=`` names
the statement's handle, for a cancel). Response: ``resultSetMetaData`` (``numRows``, ``format`` ``jsonv2``,
``rowType``: each column's ``name`` and DuckDB ``type``), ``data`` (rows of strings, each value as DuckDB writes
it; NULL as null), ``code`` ``090001``, ``sqlState`` ``00000``, ``statementHandle``, ``message``. A failed
statement is HTTP 422 with ``code``, ``message``, ``sqlState`` and ``errorType`` (the error's class, so that a
client such as the shell can raise it again); each request runs in a transaction of its own (autocommit).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import duckdb
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..errors import FtError
from . import auth
from .bounds import Refused
from .context import State, caller, in_thread, state_of
from .openai_api import parse_body

api = APIRouter()

#: (Snowflake error code, SQLSTATE) by DuckDB error class, most specific first (duckdb-ft's errors are subclasses).
ERROR_CODES: list[tuple[type, str, str]] = [
    (duckdb.PermissionException, "003001", "42501"),
    (duckdb.CatalogException, "002003", "42S02"),
    (duckdb.ParserException, "001003", "42601"),
    (duckdb.BinderException, "000904", "42703"),
    (duckdb.ConstraintException, "100072", "23000"),
    (duckdb.ConversionException, "100038", "22018"),
    (duckdb.InterruptException, "000604", "57014"),
    (duckdb.InvalidInputException, "100069", "22023"),
    (duckdb.TransactionException, "000625", "25000"),
    (duckdb.Error, "000603", "XX000"),
]
#: Snowflake's binding types to Python values (any other type is passed as its text).
BINDING_TYPES = {"FIXED": int, "REAL": float, "TEXT": str, "BOOLEAN": lambda v: str(v).lower() in ("true", "1")}


@api.post("/api/v2/statements")
async def statements(request: Request) -> JSONResponse:
    identity = await caller(request)
    body = parse_body(await request.body())
    statement = body.get("statement")
    if not isinstance(statement, str) or not statement.strip():
        raise Refused(400, "'statement' is required: the SQL text to run", "invalid_request", param="statement")
    params = bindings(body.get("bindings"))
    handle = request.query_params.get("requestId") or str(uuid.uuid4())
    state = state_of(request)
    created = int(time.time() * 1000)
    try:
        columns, types, rows = await in_thread(lambda: run(state, identity, statement, params, handle))
    except duckdb.Error as e:
        return JSONResponse(error_body(e, handle), status_code=422)
    return JSONResponse({
        "resultSetMetaData": {"numRows": len(rows), "format": "jsonv2", "partitionInfo": [{"rowCount": len(rows)}],
                              "rowType": [{"name": c, "type": t, "nullable": True} for c, t in zip(columns, types)]},
        "data": rows, "code": "090001", "statementStatusUrl": f"/api/v2/statements/{handle}", "sqlState": "00000",
        "statementHandle": handle, "message": "Statement executed successfully.", "createdOn": created})


@api.post("/api/v2/statements/{handle}/cancel")
async def cancel(handle: str, request: Request) -> JSONResponse:
    identity = await caller(request)
    found = state_of(request).running.get(handle)
    if found is not None and found[0] == identity.user:
        found[1].interrupt()
    return JSONResponse({"code": "000604" if found else "000709", "sqlState": "00000" if found else "02000",
                         "message": "Statement cancelled." if found else "No such running statement of yours.",
                         "statementHandle": handle}, status_code=200 if found else 422)


def run(state: State, identity: Any, statement: str, params: list | None,
        handle: str) -> tuple[list[str], list[str], list[list[str | None]]]:
    """Blocking: run ``statement`` on a connection of ``identity``; its column names, types and rows as text."""
    with auth.connection(state.engine, identity) as con:
        state.running[handle] = (identity.user, con)
        try:
            rel = con.sql(statement, params=params or None)
            if rel is None:
                return [], [], []
            columns, types = list(rel.columns), [str(t) for t in rel.types]
            if not columns or (getattr(rel, "type", "") == "MATERIALIZED_RELATION" and columns in (["Count"],
                                                                                                   ["Success"])):
                return [], [], []  # CREATE / INSERT / SET: no result set, as the shell prints none
            text = rel.project(", ".join(f"#{i + 1}::VARCHAR" for i in range(len(columns))))
            return columns, types, [list(r) for r in text.fetchall()]
        finally:
            state.running.pop(handle, None)


def bindings(raw: Any) -> list | None:
    """Snowflake's ``bindings`` (``{"1": {"type": "TEXT", "value": "x"}}``) as positional parameters."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(isinstance(k, str) and k.isdigit() for k in raw):
        raise Refused(400, "'bindings' must map positions (\"1\", \"2\", ...) to {\"type\": ..., \"value\": ...}",
                      "invalid_request", param="bindings")
    out = []
    for key in sorted(raw, key=int):
        b = raw[key]
        if not isinstance(b, dict):
            raise Refused(400, f"binding {key} must be an object {{\"type\": ..., \"value\": ...}}", "invalid_request",
                          param="bindings")
        value, kind = b.get("value"), str(b.get("type", "TEXT")).upper()
        try:
            out.append(None if value is None else BINDING_TYPES.get(kind, str)(value))
        except (TypeError, ValueError):
            raise Refused(400, f"binding {key}: {value!r} is not of type {kind}", "invalid_request",
                          param="bindings") from None
    return out


def error_body(e: duckdb.Error, handle: str | None = None) -> dict[str, Any]:
    """A failed statement in Snowflake's shape, with the error's class (``errorType``) for clients."""
    code, state = next((c, s) for cls, c, s in ERROR_CODES if isinstance(e, cls))
    kind = type(e).__name__ if isinstance(e, FtError) else next(
        (cls.__name__ for cls in type(e).__mro__ if getattr(duckdb, cls.__name__, None) is cls), "Error")
    return {"code": code, "message": str(e), "sqlState": state, "errorType": kind, "statementHandle": handle}
