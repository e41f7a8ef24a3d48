"""Registers duckdb-ft's SQL functions and macros on a DuckDB connection. Nothing else calls create_function.

Python UDFs are registered once per database instance, under internal names (``__ft_*``); the public names
(``complete``, ``try_complete``, ``finetune``, ...) are temporary macros created on each connection, which pass the
connection's session id to the UDFs; a cursor of an installed connection gets its own (:mod:`.cursors`). Each UDF parses its arguments, calls one core function and formats the
result; core errors become SQL errors only here.
"""

from __future__ import annotations

import inspect
import json
import threading
from typing import Any, Callable

import pyarrow as pa

from ..errors import FtError, InvalidArgument
from ..evaluation import results as evaluations, shapes as evalshapes
from ..jobs import estimate, shapes
from . import ai, aisql_functions, cursors, router, usage
from .actions import finetune_action
from .engine import Engine, Session, find_engine, register
from .statements import forms, parse_ft_statement

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
            options = [_options_text(o) for o in rest[0]] if with_options else None
            session_ids = rest[-1]
            session = engine.session(session_ids[0])
            return usage.complete_and_record(engine, session, models, prompts, options, try_mode=try_mode)
        return run

    def ai_complete(models, prompts, parameters, formats, details, session_ids):
        return ai.ai_complete(engine, engine.session(session_ids[0]), models, prompts, parameters, formats, details)

    def aisql_udf(entry: aisql_functions.AisqlFunction):
        def run(*columns):
            return entry.run(engine, engine.session(columns[-1][0]), *columns[:-1])
        return run

    def usage_history(session_ids):
        return [json.dumps(usage.as_records(usage.usage_rows(engine, engine.session(s)))) for s in session_ids]

    def finetune(session_ids, actions, a1, a2, a3, a4, a5):
        out = []
        for row in zip(session_ids, actions, a1, a2, a3, a4, a5):
            session = engine.session(row[0])
            out.append(finetune_action(engine, session, row[1], list(row[2:])))
        return out

    def history(session_ids, job_ids):
        session = engine.session(session_ids[0]) if session_ids else None
        return [json.dumps(engine.jobs.history(j, session)) if j is not None else None for j in job_ids]

    def evaluation_rows(session_ids, evaluation_ids):
        session = engine.session(session_ids[0]) if session_ids else None
        return [json.dumps(evaluations.rows(engine, session, e)) if e is not None else None for e in evaluation_ids]

    def evaluation_list(session_ids):
        return [json.dumps(evaluations.show(engine, engine.session(s))) for s in session_ids]

    def data_report(session_ids, bases, train_qs, val_qs, options):
        out = []
        for sid, base, train_q, val_q, opts in zip(session_ids, bases, train_qs, val_qs, options):
            if base is None or train_q is None:
                raise InvalidArgument("finetune_data_report(base_model, training_query [, validation_query "
                                      "[, options]]): the base model and the training query are needed")
            out.append(json.dumps(estimate.data_report(engine.cursor(), engine.session(sid), base, train_q,
                                                       val_q or None, opts), default=str))
        return out

    def statement(session_ids, texts):
        out = []
        for sid, text in zip(session_ids, texts):
            if text is None:
                out.append(None)
                continue
            if parse_ft_statement(text) is None:
                raise InvalidArgument(f"ft_execute() runs duckdb-ft's own statements ({forms()}); run other SQL "
                                      "directly")
            table = router.run(engine.session(sid), None, text)
            out.append(json.dumps(table.to_pylist(), default=str))
        return out

    V = "VARCHAR"
    udfs = [
        ("__ft_execute", statement, [V, V]),
        ("__ft_finetune", finetune, [V] * 7),
        ("__ft_finetune_history", history, [V, V]),
        ("__ft_data_report", data_report, [V] * 5),
        ("__ft_finetune_evaluation", evaluation_rows, [V, V]),
        ("__ft_finetune_evaluations", evaluation_list, [V]),
        ("__ft_usage", usage_history, [V]),
        ("__ft_complete", complete(False, False), [V, V, V]),
        ("__ft_complete_opts", complete(False, True), [V, V, V, V]),
        ("__ft_try_complete", complete(True, False), [V, V, V]),
        ("__ft_try_complete_opts", complete(True, True), [V, V, V, V]),
        ("__ft_ai_complete", ai_complete, [V] * 6),
        *((f"__ft_{f.name}", aisql_udf(f), [V] * (len(f.args) + 1)) for f in aisql_functions.FUNCTIONS.values()),
    ]
    for name, fn, params in udfs:
        con.create_function(name, _udf(fn, len(params)), params, V, type="arrow", null_handling="special", side_effects=True)
    con.create_function("__ft_engine", lambda: engine.id, [], V, side_effects=True)


_SHOW_TYPE = shapes.from_json_type(shapes.SHOW_FIELDS, array=True)
_DESCRIBE_TYPE = shapes.from_json_type(shapes.DESCRIBE_FIELDS)
_HISTORY_TYPE = shapes.from_json_type(shapes.HISTORY_FIELDS, array=True)
_DATA_REPORT_TYPE = shapes.from_json_type(estimate.DATA_REPORT_FIELDS, array=True)
_EVAL_ROWS_TYPE = evalshapes.from_json_type(evalshapes.ROW_FIELDS)
_EVAL_LIST_TYPE = evalshapes.from_json_type(evalshapes.SHOW_FIELDS)
_COMPARISON_TYPE = evalshapes.from_json_type(evalshapes.COMPARISON_FIELDS)
_SWEEP_TYPE = shapes.from_json_type(shapes.SWEEP_FIELDS, array=True)
_USAGE_TYPE = json.dumps([usage.USAGE_TYPE])


def _finetune_call(session: str, n: int) -> str:
    """The UDF call behind an ``n``-argument finetune(...): every argument as VARCHAR, the rest NULL."""
    args = [f"a{i}::VARCHAR" for i in range(1, n)] + ["NULL"] * (6 - n)
    return f"__ft_finetune({session}, action::VARCHAR, {', '.join(args)})"


def _finetune_overloads(session: str) -> str:
    """finetune's 1- to 6-argument overloads, for CREATE MACRO."""
    return ", ".join(f"({', '.join(['action'] + [f'a{i}' for i in range(1, n)])}) AS {_finetune_call(session, n)}"
                     for n in range(1, 7))


def _options_text(encoded: str | None) -> str | None:
    """COMPLETE's options as JSON text: the macro passes them ``to_json``-encoded, so an object literal
    (``{'max_tokens': 64}``, as Cortex scripts write it) arrives as its JSON and a string as a JSON string, whose
    text is the options as the user wrote them (invalid JSON included: COMPLETE's own error says what is wrong)."""
    if encoded is None:
        return None
    value = json.loads(encoded)
    return value if isinstance(value, str) else json.dumps(value)


_DATA_REPORT_ARGS = ("base_model", "training_query", "validation_query", "options")


def _macros(session_id: str) -> list[str]:
    s = f"'{session_id}'"
    yield_ = [f"CREATE OR REPLACE TEMP MACRO __ft_session_id() AS {s}"]
    # to_json lets the 3-argument form take a prompt string or a list of {role, content} structs alike.
    return yield_ + [
        f"CREATE OR REPLACE TEMP MACRO finetune{_finetune_overloads(s)}",
        f"""CREATE OR REPLACE TEMP MACRO finetune(action) AS TABLE
              (SELECT unnest(from_json({_finetune_call(s, 1)}, '{_SHOW_TYPE}'), recursive := true)),
            (action, a1) AS TABLE (SELECT unnest(from_json({_finetune_call(s, 2)}, '{_DESCRIBE_TYPE}')))""",
        f"CREATE OR REPLACE TEMP MACRO ft_execute(statement) AS __ft_execute({s}, statement::VARCHAR)",
        f"""CREATE OR REPLACE TEMP MACRO finetune_data_report{", ".join(
              f"({', '.join(args)}) AS TABLE (SELECT unnest(from_json(__ft_data_report({s}, "
              f"{', '.join(f'{a}::VARCHAR' for a in args)}{', NULL' * (4 - len(args))}), "
              f"'{_DATA_REPORT_TYPE}'), recursive := true))"
              for args in (_DATA_REPORT_ARGS[:2], _DATA_REPORT_ARGS[:3], _DATA_REPORT_ARGS))}""",
        f"""CREATE OR REPLACE TEMP MACRO finetune_history(job_id) AS TABLE
              (SELECT unnest(from_json(__ft_finetune_history({s}, job_id::VARCHAR), '{_HISTORY_TYPE}'),
                             recursive := true))""",
        f"""CREATE OR REPLACE TEMP MACRO finetune_sweep(sweep_id) AS TABLE
              (SELECT unnest(from_json(__ft_finetune({s}, 'SHOW SWEEP', sweep_id::VARCHAR, NULL, NULL, NULL, NULL),
                                       '{_SWEEP_TYPE}'), recursive := true))""",
        f"""CREATE OR REPLACE TEMP MACRO finetune_evaluation(evaluation_id) AS TABLE
              (SELECT unnest(r) FROM (SELECT unnest(from_json(__ft_finetune_evaluation({s},
                   evaluation_id::VARCHAR), '{_EVAL_ROWS_TYPE}')) AS r))""",
        f"""CREATE OR REPLACE TEMP MACRO finetune_comparison(evaluation_id) AS TABLE
              (SELECT unnest(r) FROM (SELECT unnest(from_json(__ft_finetune({s}, 'DESCRIBE EVALUATION',
                   evaluation_id::VARCHAR, NULL, NULL, NULL, NULL)::JSON->'summary'->'comparison',
                   '{_COMPARISON_TYPE}')) AS r))""",
        f"""CREATE OR REPLACE TEMP MACRO finetune_evaluations() AS TABLE
              (SELECT unnest(r) FROM (SELECT unnest(from_json(__ft_finetune_evaluations({s}),
                   '{_EVAL_LIST_TYPE}')) AS r))""",
        f"""CREATE OR REPLACE TEMP MACRO finetune_usage() AS TABLE
              (SELECT start_time::TIMESTAMP AS start_time, end_time::TIMESTAMP AS end_time, * EXCLUDE (start_time,
                      end_time) FROM (SELECT unnest(r) FROM (SELECT unnest(from_json(__ft_usage({s}),
                   '{_USAGE_TYPE}')) AS r)))""",
        f"""CREATE OR REPLACE TEMP MACRO complete(model, prompt) AS __ft_complete(model, prompt, {s}),
            (model, prompt, options) AS __ft_complete_opts(model, to_json(prompt)::VARCHAR, to_json(options)::VARCHAR, {s})""",
        f"""CREATE OR REPLACE TEMP MACRO try_complete(model, prompt) AS __ft_try_complete(model, prompt, {s}),
            (model, prompt, options) AS __ft_try_complete_opts(model, to_json(prompt)::VARCHAR, to_json(options)::VARCHAR, {s})""",
        _ai_complete_macro("TEMP MACRO ai_complete", s),
        *_aisql_macros("TEMP MACRO ", s),
    ]


def _ai_complete_macro(name: str, session: str) -> str:
    """AI_COMPLETE with Snowflake's parameters and defaults; named arguments (``response_format => {...}``) work."""
    return (f"CREATE OR REPLACE {name}(model, prompt, model_parameters := NULL, response_format := NULL, "
            f"show_details := false) AS __ft_ai_complete(model, to_json(prompt)::VARCHAR, "
            f"to_json(model_parameters)::VARCHAR, to_json(response_format)::VARCHAR, show_details::VARCHAR, {session})")


def _aisql_macros(prefix: str, session: str) -> list[str]:
    """The AISQL functions' macros, one per entry of :data:`aisql_functions.FUNCTIONS`."""
    return [f.macro(prefix, session) for f in aisql_functions.FUNCTIONS.values()]


def _cortex_macros() -> list[str]:
    """``SNOWFLAKE.CORTEX.FINETUNE / COMPLETE / TRY_COMPLETE / AI_COMPLETE``, so Cortex scripts run unchanged.

    They live in an in-memory database attached as ``snowflake`` (instance-wide, never written to the user's file)
    and find the calling connection's session through its temporary macro ``__ft_session_id()``.
    """
    s = "__ft_session_id()"
    return [
        "ATTACH IF NOT EXISTS ':memory:' AS snowflake",
        "CREATE SCHEMA IF NOT EXISTS snowflake.cortex",
        f"CREATE OR REPLACE MACRO snowflake.cortex.finetune{_finetune_overloads(s)}",
        f"""CREATE OR REPLACE MACRO snowflake.cortex.complete(model, prompt) AS __ft_complete(model, prompt, {s}),
            (model, prompt, options) AS __ft_complete_opts(model, to_json(prompt)::VARCHAR, to_json(options)::VARCHAR, {s})""",
        f"""CREATE OR REPLACE MACRO snowflake.cortex.try_complete(model, prompt)
                AS __ft_try_complete(model, prompt, {s}),
            (model, prompt, options) AS __ft_try_complete_opts(model, to_json(prompt)::VARCHAR, to_json(options)::VARCHAR, {s})""",
        _ai_complete_macro("MACRO snowflake.cortex.ai_complete", s),
        *_aisql_macros("MACRO snowflake.cortex.", s),
    ]


def install(con: Any, *, user: str | None = None, resume_jobs: bool = False, role: str | None = None) -> Session:
    """Register duckdb-ft on ``con`` (any DuckDB connection). Installing again is harmless.

    Args:
        con: a ``duckdb.DuckDBPyConnection`` (or cursor).
        user: open the session as this user; None is the database administrator.
        role: hold the user's session to this role (an access token's ROLE_RESTRICTION); None: its default role.
        resume_jobs: when this opens the database, resume the jobs that stopped unfinished (a process died or
            closed the database while they ran), whether or not another open marked them ERROR first (default:
            they are marked ERROR, and ``finetune('RESUME', id)`` resumes one).

    Returns:
        the connection's :class:`Session`.
    """
    with _install_lock:
        cursors.enable(_inherit)
        engine = find_engine(con)
        if engine is None:
            engine = Engine(con, resume_jobs=resume_jobs)
            _register_udfs(con, engine)
            register(engine)
            new = True
        else:
            new = False
        session = engine.new_session(user, role=role)
        _attach(con, session)
        if new:  # after the session's macros: the Cortex macros call __ft_session_id()
            attached = {r[0] for r in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()}
            if "snowflake" not in attached and not engine.read_only:  # a user's own database of that name wins
                for sql in _cortex_macros():
                    con.execute(sql)
        return session


def _attach(con: Any, session: Session, *, owned: bool = False) -> None:
    """Give ``con`` the macros that carry ``session`` into the UDFs, and remember its session (for its cursors;
    ``owned``: a cursor just opened, whose session goes with it)."""
    for sql in _macros(session.id):
        con.execute(sql)
    cursors.bind(con, session, owned=owned)


def _inherit(cursor: Any, parent: Session) -> None:
    """A new cursor of ``parent``'s connection: a session of the same user, role and schema (:mod:`.cursors`)."""
    session = parent.engine.new_session(parent.user, role=parent.role_restriction)  # a token's restriction holds
    session.role, session.schema = parent.role, parent.schema
    _attach(cursor, session, owned=True)
