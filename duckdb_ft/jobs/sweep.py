"""FINETUNE('SWEEP'): one job per combination of the options given as lists, over one snapshot of the rows.

``finetune('SWEEP', 'bot', base, training_query, validation_query, '{"learning_rate": [2e-4, 1e-3],
"lora_r": [8, 16]}')`` checks every combination first (a bad value in any of them fails the SWEEP with nothing
created), then creates job ``bot_1`` through the full CREATE path (checks, privileges, snapshot) and jobs
``bot_2`` ... as copies of it that read its snapshot instead of copying the rows again. The jobs queue one after
another. ``FROM finetune_sweep(id)`` ranks them by validation loss; ``finetune('CANCEL', id)`` cancels them all.
"""

from __future__ import annotations

import itertools
import json
import uuid
from typing import TYPE_CHECKING, Any

from .. import catalog
from ..catalog import jobs as jobdb
from ..errors import AlreadyExists, FtError, InvalidArgument, NotFound
from ..governance import quotas
from ..governance.limits import check_training_options
from ..options import TrainingOptions
from ..queries import parse_model_name
from . import lineage

if TYPE_CHECKING:
    from ..surface.engine import Session
    from .runner import JobRunner

MAX_JOBS = 64
#: Options that shape the snapshot of rows, which a sweep's jobs share: they cannot vary across its jobs.
SNAPSHOT_OPTIONS = ("validation_fraction", "dedupe", "pii", "drop_conflicting", "method")  # method: the columns
#: A job's fields set while it runs: a copy of the first job starts without them.
RUN_FIELDS = ("status", "progress", "started_on", "finished_on", "step", "total_steps", "train_tokens",
              "trained_tokens", "training_loss", "validation_loss", "error", "best_step", "stopped_early",
              "truncated_rows")


def grid(text: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Every combination of a sweep's options (lists are swept; ``target_modules`` sweeps a list of lists), and
    the names of the swept options. Each combination is validated as FINETUNE options; every problem is raised."""
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"option {dup[0]!r} is given twice")
        return dict(pairs)

    try:
        raw = json.loads(text or "{}", object_pairs_hook=no_duplicates)
    except ValueError as e:
        raise InvalidArgument(f"SWEEP options are not valid JSON ({e}): {str(text)[:80]!r}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument("SWEEP options must be a JSON object whose swept options are lists, "
                              "e.g. '{\"learning_rate\": [2e-4, 1e-3], \"lora_r\": [8, 16]}'")

    def swept(key: str, value: Any) -> bool:
        if key == "target_modules":
            return isinstance(value, list) and bool(value) and all(isinstance(v, list) for v in value)
        return isinstance(value, list)

    for key in ("eval_query", "eval_metric"):  # the ranking's task metric: checked and kept by the SQL surface
        raw.pop(key, None)
    axes = {k: v for k, v in raw.items() if swept(k, v)}
    if not axes:
        raise InvalidArgument("SWEEP needs at least one option given as a list of values to try, e.g. "
                              "'{\"learning_rate\": [2e-4, 1e-3]}' (for one job, use finetune('CREATE', ...))")
    empty = sorted(k for k, v in axes.items() if not v)
    if empty:
        raise InvalidArgument(f"SWEEP option(s) {', '.join(empty)} list no value to try")
    fixed = sorted(k for k in axes if k in SNAPSHOT_OPTIONS)
    if fixed:
        raise InvalidArgument(f"SWEEP option(s) {', '.join(fixed)} shape the rows, which a sweep's jobs share: "
                              "give one value (run separate sweeps to compare them)")
    size = 1
    for values in axes.values():
        size *= len(values)
    if size > MAX_JOBS:
        raise InvalidArgument(f"the SWEEP has {size} combinations; at most {MAX_JOBS}: try fewer values")
    combos, problems = [], []
    for values in itertools.product(*axes.values()):
        combo = {**raw, **dict(zip(axes, values))}
        try:
            TrainingOptions.parse(json.dumps(combo))
        except InvalidArgument as e:
            problems.append(f"{json.dumps(dict(zip(axes, values)))}: {e}")
        combos.append(combo)
    if problems:
        raise InvalidArgument("invalid SWEEP combination(s), nothing was created: " + "; ".join(problems))
    return combos, list(axes)


def create_sweep(runner: JobRunner, session: Session, name: str, base_model: str, training_query: str,
                 validation_query: str | None, options: str | None, evaluation: dict[str, str] | None = None) -> str:
    """Check every combination, then create the sweep's jobs (``name_1`` ...); return the sweep id."""
    combos, axes = grid(options)
    schema, stem = parse_model_name(name, session.schema)
    names = [f"{stem}_{k}" for k in range(1, len(combos) + 1)]
    cur = runner.engine.cursor()
    for n in names:
        if jobdb.name_in_use(cur, schema, n):
            raise AlreadyExists(f"model name '{schema}.{n}' is taken: choose another sweep name")
    quotas.check_sweep(session, cur, len(combos))  # the role's limits: the sweep's size, its options, its queue
    options_of = []  # each combination's options; continuing a fine-tuned model, with its LoRA shape (or an error)
    for combo in combos:
        opts = TrainingOptions.parse(json.dumps(combo))
        check_training_options(session, opts)  # every combination: several machines are the administrator's
        quotas.check_job(session, cur, opts, 0)
        lineage.find_parent(cur, session, base_model, json.dumps(combo), opts)
        options_of.append(opts.to_json())
    quotas.check_job(session, cur, TrainingOptions.parse(json.dumps(combos[0])), len(combos))
    first = runner.create(session, f"{schema}.{names[0]}", base_model, training_query, validation_query,
                          json.dumps(combos[0]), sweep_epochs=max(json.loads(o)["max_epochs"] for o in options_of))
    sweep_id = f"sw_{uuid.uuid4()}"
    template = jobdb.get_job(cur, first)
    copies = []
    try:
        with catalog.transaction(cur):
            cur.execute(f"INSERT INTO {catalog.SCHEMA}.sweeps (id, schema_name, name, base_model, swept, owner, "
                        "created_on) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [sweep_id, schema, stem, base_model, json.dumps(axes), session.role, catalog.now_ms()])
            if evaluation:
                cur.execute(f"UPDATE {catalog.SCHEMA}.sweeps SET eval_query = ?, eval_metric = ? WHERE id = ?",
                            [evaluation["eval_query"], evaluation["eval_metric"], sweep_id])
            jobdb.update_job(cur, first, sweep_id=sweep_id)
            for n, options_json in zip(names[1:], options_of[1:]):
                job = {k: v for k, v in template.items() if k not in RUN_FIELDS}
                job.update(id=f"ft_{uuid.uuid4()}", model_name=n, options=options_json, status="PENDING",
                           progress=0.0, created_on=catalog.now_ms(), sweep_id=sweep_id, snapshot_of=first)
                jobdb.insert_job(cur, job)
                copies.append(job["id"])
    except BaseException:
        runner.cancel(first, session)  # the sweep could not be recorded: its first job must not run alone
        raise
    for job_id in copies:
        runner.submit(job_id)
    return sweep_id


def _sweep(runner: JobRunner, session: Session, sweep_id: str) -> dict[str, Any]:
    row = catalog.one(runner.engine.cursor(), f"SELECT id, schema_name, name, base_model, swept, owner, created_on "
                      f"FROM {catalog.SCHEMA}.sweeps WHERE id = ?", [sweep_id]) if isinstance(sweep_id, str) else None
    if row is not None and session is not None and not session.is_admin and row[5] not in session.checker().roles:
        row = None  # as for jobs: a sweep you may not see does not exist for you
    if row is None:
        raise NotFound(f"sweep {sweep_id!r} does not exist: finetune('SWEEP', ...) returns a sweep id (sw_...)")
    return dict(zip(("id", "schema_name", "name", "base_model", "swept", "owner", "created_on"), row))


def rank(runner: JobRunner, session: Session, sweep_id: str) -> list[dict[str, Any]]:
    """The sweep's jobs, best validation loss first (unfinished and failed jobs last, in creation order)."""
    sweep = _sweep(runner, session, sweep_id)
    swept = json.loads(sweep["swept"])
    jobs = catalog.dicts(runner.engine.cursor().execute(
        f"SELECT * FROM {catalog.SCHEMA}.jobs WHERE sweep_id = ? ORDER BY created_on, model_name", [sweep_id]))
    jobs.sort(key=lambda j: (j["status"] != "SUCCESS", j["validation_loss"] if j["status"] == "SUCCESS" else 0))
    out = []
    for k, j in enumerate(jobs, 1):
        opts = json.loads(j["options"])
        wall = (j["finished_on"] - j["started_on"]) / 1000 if j["finished_on"] and j["started_on"] else None
        out.append({"rank": k, "job_id": j["id"], "model": f"{j['schema_name']}.{j['model_name']}",
                    "status": j["status"], "swept": {key: opts[key] for key in swept},
                    "validation_loss": j["validation_loss"], "training_loss": j["training_loss"],
                    "best_step": j["best_step"], "trained_tokens": j["trained_tokens"], "wall_s": wall,
                    "options": opts})
    return out


def cancel(runner: JobRunner, session: Session, sweep_id: str) -> str:
    """Cancel every job of the sweep that is still PENDING or IN_PROGRESS."""
    _sweep(runner, session, sweep_id)
    active = [r[0] for r in runner.engine.cursor().execute(
        f"SELECT id FROM {catalog.SCHEMA}.jobs WHERE sweep_id = ? AND status IN ('PENDING', 'IN_PROGRESS')",
        [sweep_id]).fetchall()]
    for job_id in active:
        try:
            runner.cancel(job_id, session)
        except FtError:  # finished meanwhile
            pass
    return f"Canceled {len(active)} job(s) of sweep {sweep_id}"
