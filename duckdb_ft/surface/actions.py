"""FINETUNE's actions: a table from the action's name to a core function; an unknown action's error lists the
valid ones. Each takes (engine, session, [arg1..arg5]) and returns the SQL result as text."""

from __future__ import annotations

import json
from typing import Callable

from ..errors import InvalidArgument
from ..evaluation import evaluate as evaluation, results as evaluations, sweep_ranking as sweep_scores
from ..jobs import sweep
from .engine import Engine, Session


def _show(engine: Engine, session: Session, args: list) -> str:
    return json.dumps(engine.jobs.show(session))


def _require(call: str, *named: tuple[str, object], hint: str = "") -> None:
    """Raise InvalidArgument naming the first of ``named`` (label, value) that is NULL, in ``call``'s words."""
    for label, value in named:
        if value is None:
            raise InvalidArgument(f"{call}: the {label} is missing{hint}")


def _create(engine: Engine, session: Session, args: list) -> str:
    name, base, train_q, val_q, options = args
    _require("finetune('CREATE', name, base_model, training_query [, validation_query [, options]])",
             ("model name", name), ("base model", base), ("training query", train_q))
    engine.require_writable("create fine-tuning jobs")
    return engine.jobs.create(session, name, base, train_q, val_q or None, options)


def _job_arg(args: list, action: str) -> str:
    if args[0] is None:
        raise InvalidArgument(f"finetune('{action}', job_id) needs a job id, e.g. finetune('{action}', 'ft_...')")
    return args[0]


def _wait(engine: Engine, session: Session, args: list) -> str:
    timeout = None
    if args[1] is not None:
        try:
            timeout = float(args[1])
        except ValueError:
            raise InvalidArgument(f"finetune('WAIT', job_id, timeout_seconds): bad timeout {args[1]!r}") from None
        if timeout != timeout:  # NaN: no comparison ends the wait
            raise InvalidArgument("finetune('WAIT', job_id, timeout_seconds): the timeout is NaN; pass a number of "
                                  "seconds, or NULL to wait until the job ends")
    job_id = _job_arg(args, "WAIT")
    engine.jobs.describe(job_id, session)  # the same visibility as DESCRIBE
    return engine.jobs.wait(job_id, timeout, session.interrupted)


def _sweep(engine: Engine, session: Session, args: list) -> str:
    name, base, train_q, val_q, options = args
    _require("finetune('SWEEP', name, base_model, training_query, validation_query, options)",
             ("sweep name", name), ("base model", base), ("training query", train_q), ("options", options),
             hint=" (options name the values to try as lists)")
    engine.require_writable("create fine-tuning jobs")
    evaluation_options = sweep_scores.check(engine, session, options)  # before any job exists
    return sweep.create_sweep(engine.jobs, session, name, base, train_q, val_q or None, options, evaluation_options)


def _evaluate(engine: Engine, session: Session, args: list) -> str:
    models, query, options = args[0], args[1], args[2]
    return evaluation.evaluate(engine, session, models, query, options)


def _estimate(engine: Engine, session: Session, args: list) -> str:
    base, train_q, val_q, options = args[0], args[1], args[2], args[3]
    _require("finetune('ESTIMATE', base_model, training_query [, validation_query [, options]])",
             ("base model", base), ("training query", train_q))
    from ..jobs.estimate import estimate

    return json.dumps(estimate(engine.cursor(), session, base, train_q, val_q or None, options))


#: FINETUNE's actions: each takes (engine, session, [arg1..arg5]) and returns the SQL result as text.
ACTIONS: dict[str, Callable[[Engine, Session, list], str]] = {
    "CREATE": _create,
    "SHOW": _show,
    "DESCRIBE": lambda e, s, a: json.dumps(e.jobs.describe(_job_arg(a, "DESCRIBE"), s)),
    "CANCEL": lambda e, s, a: (sweep.cancel(e.jobs, s, a[0]) if str(a[0]).startswith("sw_")
                               else e.jobs.cancel(_job_arg(a, "CANCEL"), s)),
    "RESUME": lambda e, s, a: e.jobs.resume(_job_arg(a, "RESUME"), s),
    "WAIT": _wait,
    "ESTIMATE": _estimate,
    "EVALUATE": _evaluate,
    "SHOW EVALUATIONS": lambda e, s, a: json.dumps(evaluations.show(e, s)),
    "DESCRIBE EVALUATION": lambda e, s, a: json.dumps(evaluations.describe(e, s, a[0])),
    "SWEEP": _sweep,
    "SHOW SWEEP": lambda e, s, a: json.dumps(sweep_scores.with_scores(
        e, s, a[0], sweep.rank(e.jobs, s, _job_arg(a, "SHOW SWEEP")))),
}


def finetune_action(engine: Engine, session: Session, action: str | None, args: list) -> str:
    key = " ".join((action or "").split()).upper()
    if key not in ACTIONS:
        raise InvalidArgument(f"unknown FINETUNE action {action!r}; valid actions: {', '.join(ACTIONS)}")
    return ACTIONS[key](engine, session, args)
