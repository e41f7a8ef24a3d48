"""Registers duckdb-ft's SQL functions and macros on a DuckDB connection. Nothing else calls create_function.

Python UDFs are registered once per database instance, under internal names (``__ft_*``); the public names
(``complete``, ``try_complete``, ``finetune``, ...) are temporary macros created on each connection, which pass the
connection's session id to the UDFs. Each UDF parses its arguments, calls one core function and formats the
result; core errors become SQL errors only here.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any, Callable

import pyarrow as pa

from . import complete as completion
from .engine import Engine, Session
from .errors import FtError

_engines: dict[str, Engine] = {}
_install_lock = threading.Lock()


def _udf(fn: Callable[..., list], arity: int) -> Callable[..., pa.Array]:
    """Wrap a core function over Python lists as an Arrow UDF; FtError keeps its readable message."""

    def wrapper(*arrays: pa.Array) -> pa.Array:
        cols = [a.to_pylist() for a in arrays]
        try:
            return pa.array(fn(*cols), type=pa.string())
        except FtError as e:
            raise type(e)(str(e)) from None  # drop the chained traceback: the message is the whole story

    # DuckDB checks the Python signature against the declared parameter types.
    wrapper.__signature__ = inspect.Signature(
        [inspect.Parameter(f"a{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(arity)]
    )
    return wrapper


def _register_udfs(con: Any, engine: Engine) -> None:
    def complete(try_mode: bool, with_options: bool):
        def run(models, prompts, *rest):
            options = rest[0] if with_options else None
            session_ids = rest[-1]
            session = engine.session(session_ids[0])
            return completion.complete_rows(
                lambda name: engine.resolve_model(session, name), models, prompts, options, try_mode=try_mode
            )
        return run

    V = "VARCHAR"
    udfs = [
        ("__ft_complete", complete(False, False), [V, V, V]),
        ("__ft_complete_opts", complete(False, True), [V, V, V, V]),
        ("__ft_try_complete", complete(True, False), [V, V, V]),
        ("__ft_try_complete_opts", complete(True, True), [V, V, V, V]),
    ]
    for name, fn, params in udfs:
        con.create_function(name, _udf(fn, len(params)), params, V, type="arrow", null_handling="special", side_effects=False)
    con.create_function("__ft_engine", lambda: engine.id, [], V, side_effects=False)


def _macros(session_id: str) -> list[str]:
    s = f"'{session_id}'"
    # to_json lets the 3-argument form take a prompt string or a list of {role, content} structs alike.
    return [
        f"""CREATE OR REPLACE TEMP MACRO complete(model, prompt) AS __ft_complete(model, prompt, {s}),
            (model, prompt, options) AS __ft_complete_opts(model, to_json(prompt)::VARCHAR, options, {s})""",
        f"""CREATE OR REPLACE TEMP MACRO try_complete(model, prompt) AS __ft_try_complete(model, prompt, {s}),
            (model, prompt, options) AS __ft_try_complete_opts(model, to_json(prompt)::VARCHAR, options, {s})""",
    ]


def _engine_of(con: Any) -> Engine | None:
    try:
        engine_id = con.execute("SELECT __ft_engine()").fetchone()[0]
    except Exception:
        return None
    return _engines.get(engine_id)


def install(con: Any, *, user: str | None = None) -> Session:
    """Register duckdb-ft on ``con`` (any DuckDB connection). Installing again is harmless.

    Args:
        con: a ``duckdb.DuckDBPyConnection`` (or cursor).
        user: open the session as this user; None is the database administrator.

    Returns:
        the connection's :class:`Session`.
    """
    with _install_lock:
        engine = _engine_of(con)
        if engine is None:
            engine = Engine(con)
            _register_udfs(con, engine)
            _engines[engine.id] = engine
        session = engine.new_session(user)
        for sql in _macros(session.id):
            con.execute(sql)
        return session
