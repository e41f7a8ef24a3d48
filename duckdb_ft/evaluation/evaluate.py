"""FINETUNE('EVALUATE', models, query [, options]): generate with every model on the same rows, score every
prediction, store everything, and return a JSON summary with a paired comparison of the models.

Every check comes first, before any generation, and a failed check changes nothing: the options, the metric
names and user metrics, the model list (each model exists; USAGE on each fine-tuned one), the query (one
read-only query; SELECT on what it reads, as FINETUNE 'CREATE' checks it; text columns ``prompt`` and
``completion``, optional ``id``), sql_match's references (SELECT on what they read; each one runs), and every
prompt fits every model's context. Then an ``IN_PROGRESS`` evaluation is recorded, owned by the caller's role,
and its progress updated after each batch (of up to 64 rows, as COMPLETE batches them); ``Connection.interrupt()`` (Ctrl-C in the shell) stops it between
batches (status ``CANCELLED``). At the end the rows and the summary are stored in one transaction.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .. import catalog
from ..catalog import evaluations as evaldb
from ..errors import FtError, Interrupted, InvalidArgument, NotFound
from ..governance import quotas
from ..governance.authorize import authorize_query
from ..governance.base_models import base_model_for, shown
from ..governance.sqlglot_reads import tables_read
from ..ml import complete as completion, data, likelihood, models as mlmodels
from ..options import CompleteOptions, EvaluateOptions
from ..queries import check_query, parse
from . import metrics as M, retention, significance, usermetrics
from .sqlmatch import Sandbox, extract_sql

if TYPE_CHECKING:
    from ..governance.roles import Checker
    from ..ml.models import LoadedModel
    from ..surface.engine import Engine, Session

#: Rows generated per batch, as COMPLETE batches them (so a model answers as it would in COMPLETE): the unit of
#: progress and of cancelling.
CHUNK_ROWS = completion.BATCH_ROWS
#: The evaluation each session is running now, for a live display (the shell's): session id -> {id, model, done,
#: total, started}. A statement that runs an EVALUATE blocks its connection, so this is read in process. An entry
#: lives as long as its ``evaluate`` call (removed in its ``finally``): at most one per session.
RUNNING: dict[str, dict[str, Any]] = {}


def parse_models(text: Any) -> list[str]:
    """One model name, or a JSON array of distinct names."""
    usage = "pass one model name or a JSON array of names, e.g. '[\"smollm2-135m\", \"shop_sql\"]'"
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument(f"finetune('EVALUATE', models, query [, options]): the models are missing: {usage}")
    if not text.lstrip().startswith("["):
        return [text.strip()]
    try:
        names = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"the model list is not valid JSON ({e.msg} at position {e.pos}): {usage}") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise InvalidArgument(f"the model list must be a non-empty array of model names: {usage}")
    names = [n.strip() for n in names]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"the model list names a model twice: {names}")
    return names


def parse_metrics(spec: list | None) -> list[M.Metric]:
    """The metrics to compute, from the ``metrics`` option (None: :data:`metrics.DEFAULT`)."""
    out: list[M.Metric] = []
    for item in spec if spec is not None else M.DEFAULT:
        if isinstance(item, str):
            if item not in M.BUILTIN:
                raise InvalidArgument(f"unknown metric {item!r}; valid metrics: {', '.join(M.BUILTIN)}, or a user "
                                      'metric {"name": "short", "sql": "length(prediction) < 200"}')
            out.append(M.BUILTIN[item])
        else:
            out.append(usermetrics.parse_spec(item))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"the metrics list names a metric twice: {names}")
    return out


def _check_schema(opts: EvaluateOptions, wanted: list[M.Metric]) -> None:
    """json_schema_valid needs the option schema, a valid JSON Schema (checked before anything is generated)."""
    if not any(m.needs == M.SCHEMA for m in wanted):
        return
    if opts.schema is None:
        raise InvalidArgument('metric json_schema_valid needs the option schema: {"metrics": ["json_schema_valid"], '
                              '"schema": {"type": "object", "properties": {...}}}')
    import jsonschema

    try:
        jsonschema.validators.validator_for(opts.schema).check_schema(opts.schema)
    except jsonschema.SchemaError as e:
        raise InvalidArgument(f"option schema is not a valid JSON Schema: {e.message}") from None


@dataclass
class Run:
    """One evaluation, as checked and prepared before it is recorded: what :func:`_run` generates and scores."""

    id: str
    names: list[str]
    """The models, in the order given."""
    found: dict[str, dict | None]
    """Each model's catalog row (None: a base model)."""
    loaded: dict[str, tuple[LoadedModel, str | None]]
    """Each model's loaded base model and LoRA adapter (None: the base model itself)."""
    requests: dict[str, list[completion.Request]]
    lengths: dict[str, list[int]]
    """Each model's prompt lengths in tokens (its chat template's)."""
    ids: list[str]
    prompts: list[str]
    refs: list[str]
    """The reference completions."""
    rejected: list[str | None]
    """A preference pair's rejected completion, per row (the query's column ``rejected``; None without it)."""
    skipped: int
    """Rows of the query left out (a NULL prompt or completion)."""
    wanted: list[M.Metric]
    sandbox: Sandbox | None
    """sql_match's sandbox, when that metric is wanted."""
    opts: EvaluateOptions


def evaluate(engine: Engine, session: Session, models_arg: Any, query: Any, options: Any = None) -> str:
    """Run one evaluation; the JSON summary (see the README's EVALUATE section)."""
    opts = EvaluateOptions.parse(options)
    wanted = parse_metrics(opts.metrics)
    names = parse_models(models_arg)
    if query is None:
        raise InvalidArgument("finetune('EVALUATE', models, query [, options]): the query is missing: pass a SELECT "
                              "returning prompt and completion (the reference), and optionally id")
    engine.require_writable("record evaluations")
    cur = engine.cursor()
    wanted_tokens = opts.complete_options().max_tokens  # the role's limits, as COMPLETE's
    quotas.check_complete(session, cur, [json.dumps({"max_tokens": wanted_tokens} if wanted_tokens else {})])
    check = session.checker()
    found = {n: _check_model(engine, session, check, n) for n in names}
    sql = check_query(query, "evaluation query")
    authorize_query(session, cur, sql, "evaluation query")  # as CREATE: SELECT on what it reads, no FINETUNE
    data.check_columns(cur, sql, "evaluation query")
    wanted = [usermetrics.check(cur, session, m) if m.sql else m for m in wanted]
    _check_schema(opts, wanted)
    if opts.sql_database is not None:
        check.require_admin("sql_match on another database file (option sql_database)")
        if not os.path.isfile(opts.sql_database):
            raise NotFound(f"sql_database {opts.sql_database!r} is not a file: pass the path of a DuckDB database")
    ids, prompts, refs, rejected, skipped = _rows(cur, sql, any(m.name == "preference_accuracy" for m in wanted))
    sandbox = _sandbox(engine, session, refs, ids, opts) if any(m.needs == M.SANDBOX for m in wanted) else None
    try:
        loaded = {n: engine.resolve_model(session, n) for n in names}
        copts = opts.complete_options()
        requests = {n: [completion.Request([{"role": "user", "content": p}], copts) for p in prompts] for n in names}
        lengths = {n: _check_fits(loaded[n][0], requests[n]) for n in names}
        ev_id = f"ev_{uuid.uuid4()}"
        evaldb.insert(cur, {"id": ev_id, "owner": session.role, "models": json.dumps(names), "query": sql,
                            "options": json.dumps(json.loads(options) if options else {}), "status": "IN_PROGRESS",
                            "progress": 0.0, "rows": len(prompts), "skipped_rows": skipped,
                            "created_on": catalog.now_ms()})
        RUNNING[session.id] = {"id": ev_id, "model": names[0], "done": 0, "total": len(names) * len(prompts),
                               "started": time.monotonic()}
        try:
            try:
                summary = _run(engine, session, Run(ev_id, names, found, loaded, requests, lengths, ids, prompts,
                                                    refs, rejected, skipped, wanted, sandbox, opts))
            except BaseException as e:
                stopped = isinstance(e, (Interrupted, KeyboardInterrupt))
                evaldb.update(cur, ev_id, status="CANCELLED" if stopped else "ERROR", finished_on=catalog.now_ms(),
                              error=str(e).splitlines()[0] if str(e) else type(e).__name__)
                raise
        finally:
            _record_usage(engine, session, names, found, requests)
    finally:
        RUNNING.pop(session.id, None)
        if sandbox is not None:
            sandbox.close()
    return json.dumps(summary)


def _record_usage(engine: Engine, session: Session, names: list[str], found: dict[str, dict | None],
                  requests: dict[str, list[completion.Request]]) -> None:
    """One EVALUATE call per model (version) in the usage history: its rows, tokens, and rows left unanswered."""
    for n in names:
        row = found[n]
        done = [r.result for r in requests[n] if r.result is not None]
        engine.usage.add("EVALUATE", f"{row['schema_name']}.{row['name']}" if row else n,
                         row["version"] if row else None, session.role, rows=len(requests[n]),
                         prompt_tokens=sum(r.prompt_tokens for r in done),
                         completion_tokens=sum(r.completion_tokens for r in done),
                         errors=len(requests[n]) - len(done))
    engine.usage.flush()


def _check_model(engine: Engine, session: Session, check: Checker, name: str) -> dict | None:
    """USAGE on a fine-tuned model (its catalog row), or the base model exists (no weights loaded yet)."""
    row = engine.find_model(name, session)
    if row is not None:
        check.require("USAGE", "MODEL", f"{row['schema_name']}.{row['name']}")
        return row
    mlmodels.resolve(base_model_for(session, engine.cursor(), name, mlmodels.BUILTIN))  # ModelNotFound: what to do
    return None


def _rows(cur: Any, sql: str, pairs: bool = False) -> tuple[list[str], list[str], list[str], list[str | None], int]:
    """The query, run once: (ids, prompts, references, rejected completions, rows skipped for a NULL prompt or
    completion). ``pairs``: the query must return ``rejected`` (preference_accuracy's)."""
    columns = {r[0] for r in cur.execute(f"DESCRIBE (\n{sql}\n)").fetchall()}
    id_expr = "id::VARCHAR" if "id" in columns else "NULL"
    if pairs and "rejected" not in columns:
        raise InvalidArgument("preference_accuracy compares the reference completion (the chosen answer) with a "
                              "rejected one: the evaluation query must also return a column rejected, e.g. "
                              "SELECT question AS prompt, kept AS completion, discarded AS rejected FROM drafts")
    rejected_expr = "rejected::VARCHAR" if "rejected" in columns else "NULL"
    try:
        got = cur.execute(f"SELECT {id_expr}, prompt::VARCHAR, completion::VARCHAR, {rejected_expr} "
                          f"FROM (\n{sql}\n) AS q").fetchall()
    except Exception as e:  # duckdb.Error while running the user's query
        raise InvalidArgument(f"the evaluation query fails: {str(e).splitlines()[0]}") from None
    kept = [(str(k) if i is None else i, p, c, r) for k, (i, p, c, r) in enumerate(got, start=1)
            if p is not None and c is not None]
    if not kept:
        raise InvalidArgument(f"the evaluation query returned no row with both prompt and completion non-NULL "
                              f"({len(got)} rows): check its WHERE clause and the NULLs in your columns")
    return ([k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept], [k[3] for k in kept],
            len(got) - len(kept))


def _sandbox(engine: Engine, session: Session, refs: Sequence[str], ids: Sequence[str],
             opts: EvaluateOptions) -> Sandbox:
    """sql_match's sandbox: the tables the references read, copied after SELECT is checked; or a database file."""
    if opts.sql_database is not None:
        path = opts.sql_database.replace("'", "''")
        box = Sandbox(setup=lambda con: (con.execute(f"ATTACH '{path}' AS sql_db (READ_ONLY)"),
                                         con.execute("USE sql_db")))
    else:
        tables: set[str] = set()
        for ref, rid in zip(refs, ids):
            try:
                ref_sql = check_query(extract_sql(ref), f"reference of row {rid}")
                stmt = parse(ref_sql)[0]
            except FtError as e:
                raise InvalidArgument(f"sql_match: the reference completion of row {rid} is not one SQL query "
                                      f"({e}); fix it, or drop sql_match from the metrics") from None
            cur = engine.cursor()
            read = authorize_query(session, cur, ref_sql, f"sql_match reference of row {rid}")
            tables |= read | tables_read(stmt, session.schema)[0]
        cur = engine.cursor()
        copies = {}
        for name in sorted(tables):
            s, t = name.split(".", 1)
            copies[name] = cur.sql(f'SELECT * FROM "{s}"."{t}"').to_arrow_table()
        box = Sandbox(tables=copies, pure_only=not session.is_admin)
    try:
        box.check_references(refs, ids)
    except BaseException:
        box.close()
        raise
    return box


def _check_fits(loaded: LoadedModel, requests: Sequence[completion.Request]) -> list[int]:
    """Every prompt (and max_tokens) fits the model's context: an error now, not after other models generated.
    Returns each prompt's length in tokens."""
    lengths = []
    for r in requests:
        n = len(completion.prompt_ids(loaded, r.messages))
        completion.fit_context(loaded, n, r.options.max_tokens)
        lengths.append(n)
    return lengths


def _generate(session: Session, cur: Any, ev_id: str, loaded: LoadedModel, adapter: str | None,
              requests: list[completion.Request], lengths: list[int], done: int, total: int) -> list[float]:
    """Generate in chunks of similar prompt lengths, as COMPLETE does; per-row latency (the chunk's time shared by
    its rows)."""
    order = sorted(range(len(requests)), key=lambda i: lengths[i])
    latency = [0.0] * len(requests)
    for start in range(0, len(order), CHUNK_ROWS):
        if session.interrupted.is_set():
            raise Interrupted(f"evaluation {ev_id} was interrupted: nothing of it is kept but its record "
                              "(status CANCELLED)")
        chunk = [requests[i] for i in order[start:start + CHUNK_ROWS]]
        began = time.perf_counter()
        completion.generate(loaded, chunk, adapter, fail_fast=True)
        per_row = (time.perf_counter() - began) * 1000 / len(chunk)
        for i in order[start:start + CHUNK_ROWS]:
            latency[i] = per_row
        done += len(chunk)
        evaldb.update(cur, ev_id, progress=round(done / total, 4))
        RUNNING.get(session.id, {}).update(done=done)
    return latency


def _run(engine: Engine, session: Session, run: Run) -> dict[str, Any]:
    """Generate and score every model's answers, store the rows and the summary (status SUCCESS); the summary."""
    cur = engine.cursor()
    total = len(run.names) * len(run.prompts)
    per_model: dict[str, dict[str, list]] = {}
    for k, name in enumerate(run.names):
        # resolved again: its adapter is attached again if other models' evicted it since (models.MAX_ADAPTERS)
        model, adapter = run.loaded[name] = engine.resolve_model(session, name)
        RUNNING.get(session.id, {}).update(model=name)
        latency = _generate(session, cur, run.id, model, adapter, run.requests[name], run.lengths[name],
                            k * len(run.prompts), total)
        preds = [r.result.text for r in run.requests[name]]
        scoring = M.Scoring(ids=run.ids, prompts=run.prompts, refs=run.refs, rejected=run.rejected, preds=preds,
                            model_name=name,
                            model=model, adapter=adapter, sandbox=run.sandbox, cur=cur, schema=run.opts.schema)
        values = {m.name: m.score(scoring) for m in run.wanted}
        per_model[name] = {"preds": preds, "values": values, "latency": latency}
    summary = _summary(run, per_model)
    if run.opts.retention:
        summary["retention"] = _retention(run)
        for figures in summary["retention"].values():  # the registered name, never a path, to a user
            figures["base_model"] = shown(session, engine.cursor(), figures["base_model"], mlmodels.BUILTIN)
    rows = []
    for name in run.names:
        got = per_model[name]
        for i, (rid, prompt, ref) in enumerate(zip(run.ids, run.prompts, run.refs)):
            r = run.requests[name][i].result
            row = {"evaluation_id": run.id, "model": name, "idx": i, "id": rid, "prompt": prompt, "completion": ref,
                   "prediction": got["preds"][i], "prompt_tokens": r.prompt_tokens,
                   "completion_tokens": r.completion_tokens, "latency_ms": got["latency"][i]}
            user = {m.name: got["values"][m.name][i] for m in run.wanted if m.sql}
            row["scores"] = {m.name: got["values"][m.name][i] for m in run.wanted if not m.sql}
            row["user_metrics"] = json.dumps(user) if user else None
            rows.append(row)
    with catalog.transaction(cur):
        evaldb.insert_rows(cur, rows)
        evaldb.update(cur, run.id, status="SUCCESS", progress=1.0, finished_on=catalog.now_ms(),
                      summary=json.dumps(summary))
    return summary


def _summary(run: Run, per_model: dict[str, dict[str, list]]) -> dict[str, Any]:
    """The evaluation's JSON summary: each model's corpus scores with intervals, the paired comparisons."""
    names, prompts, refs, wanted, opts = run.names, run.prompts, run.refs, run.wanted, run.opts
    models_out: dict[str, Any] = {}
    stats: dict[tuple[str, str], Any] = {}
    for name in names:
        got = per_model[name]
        entry: dict[str, Any] = {}
        intervals: dict[str, Any] = {}
        for m in wanted:
            stats[name, m.name] = M.corpus_stats(m, got["values"][m.name], got["preds"], refs)
            entry[m.name] = M.corpus_from_stats(m, stats[name, m.name].sum(axis=0))
            intervals[m.name] = significance.interval(m, stats[name, m.name], opts.bootstrap_samples, opts.seed)
        results = [r.result for r in run.requests[name]]
        entry.update(mean_latency_ms=sum(got["latency"]) / len(prompts),
                     prompt_tokens=sum(r.prompt_tokens for r in results),
                     completion_tokens=sum(r.completion_tokens for r in results), intervals=intervals)
        models_out[name] = entry
    comparison = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for m in wanted:
                comparison.append(significance.compare(
                    m, a, b, per_model[a]["values"][m.name], per_model[b]["values"][m.name], stats[a, m.name],
                    stats[b, m.name], samples=opts.bootstrap_samples, seed=opts.seed))
    return {"evaluation_id": run.id, "status": "SUCCESS", "rows": len(prompts), "skipped_rows": run.skipped,
            "metrics": [m.name for m in wanted], "models": models_out, "comparison": comparison}


def _retention(run: Run) -> dict[str, Any]:
    """Forgetting figures for each fine-tuned model of the list (base models have nothing to compare with)."""
    out: dict[str, Any] = {}
    for name in run.names:
        if run.found[name] is None:
            continue
        model, adapter = run.loaded[name]

        def answer(prompts: list[str], which: str | None) -> list[str]:
            reqs = [completion.Request([{"role": "user", "content": p}],
                                       CompleteOptions(max_tokens=retention.MAX_TOKENS)) for p in prompts]
            completion.generate(model, reqs, which, fail_fast=True)
            return [r.result.text for r in reqs]

        figures = retention.measure(answer, lambda pairs, which: likelihood.completion_losses(model, pairs, which),
                                    adapter)
        out[name] = {"base_model": run.found[name]["base_model"], **figures}
    return out
