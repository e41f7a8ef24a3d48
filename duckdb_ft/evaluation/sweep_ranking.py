"""A sweep ranked by a task metric: SWEEP options ``eval_query`` and ``eval_metric`` (an EVALUATE metric name).

They are checked at SWEEP, before any job exists, as EVALUATE checks them (the metric's name; the query: one
read-only query, SELECT on what it reads, text columns ``prompt`` and ``completion``). Once every job of the sweep
has finished, the first ``FROM finetune_sweep(id)`` runs one EVALUATE of all the sweep's successful models on
that query (greedy, COMPLETE's batching), stores its id and scores with the sweep, and ranks by the metric (higher
first, or lower for ``completion_loss``); later reads reuse the stored scores. Until then the ranking is by
validation loss and the score columns are NULL.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .. import catalog
from ..errors import InvalidArgument
from ..governance.authorize import authorize_query
from ..ml import data
from ..queries import check_query
from . import evaluate as evaluation, metrics as M

if TYPE_CHECKING:
    from ..surface.engine import Engine, Session

KEYS = ("eval_query", "eval_metric")


def check(engine: Engine, session: Session, options: str | None) -> dict[str, str] | None:
    """The sweep's evaluation options, checked; None when the options name neither."""
    try:
        raw = json.loads(options or "{}")
    except ValueError:
        return None  # the sweep's own option check reports bad JSON
    if not isinstance(raw, dict) or not any(k in raw for k in KEYS):
        return None
    query, metric = raw.get("eval_query"), raw.get("eval_metric")
    if not isinstance(query, str) or not isinstance(metric, str):
        raise InvalidArgument("SWEEP options eval_query and eval_metric go together: eval_query a SELECT returning "
                              "prompt and completion (the reference), eval_metric an EVALUATE metric name, e.g. "
                              "'{\"eval_query\": \"SELECT q AS prompt, a AS completion FROM test\", "
                              "\"eval_metric\": \"exact_match\"}'")
    wanted = evaluation.parse_metrics([metric])
    if wanted[0].needs not in (M.TEXTS, M.MODEL):
        rankable = [m.name for m in M.BUILTIN.values() if m.needs in (M.TEXTS, M.MODEL)]
        raise InvalidArgument(f"eval_metric {metric!r}: a sweep ranks by a built-in metric scored from the texts or "
                              f"the model: {', '.join(rankable)}")
    cur = engine.cursor()
    sql = check_query(query, "eval_query")
    authorize_query(session, cur, sql, "eval_query")
    data.check_columns(cur, sql, "eval_query")
    return {"eval_query": sql, "eval_metric": metric}


def with_scores(engine: Engine, session: Session, sweep_id: str, ranking: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``ranking`` (from jobs.sweep.rank) with the task metric, evaluated once when every job has finished."""
    cur = engine.cursor()
    row = catalog.one(cur, f"SELECT eval_query, eval_metric, eval_scores FROM {catalog.SCHEMA}.sweeps WHERE id = ?",
                      [sweep_id])
    if row is None or row[0] is None:
        return ranking
    query, metric, stored = row
    scores = json.loads(stored) if stored else None
    if scores is None and not any(r["status"] in catalog.ACTIVE for r in ranking):
        models = [r["model"] for r in ranking if r["status"] == "SUCCESS"]
        if models:
            summary = json.loads(evaluation.evaluate(engine, session, json.dumps(models), query,
                                                     json.dumps({"metrics": [metric]})))
            scores = {m: summary["models"][m][metric] for m in models}
            cur.execute(f"UPDATE {catalog.SCHEMA}.sweeps SET evaluation_id = ?, eval_scores = ? WHERE id = ?",
                        [summary["evaluation_id"], json.dumps(scores), sweep_id])
    for r in ranking:
        r["eval_metric"], r["eval_score"] = metric, (scores or {}).get(r["model"])
    if scores:
        higher = evaluation.parse_metrics([metric])[0].higher_is_better
        ranking.sort(key=lambda r: (r["eval_score"] is None,
                                    -(r["eval_score"] or 0) if higher else (r["eval_score"] or 0)))
        for k, r in enumerate(ranking, 1):
            r["rank"] = k
    return ranking
