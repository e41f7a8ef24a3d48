"""The shapes of EVALUATE's answers: the SHOW EVALUATIONS list, DESCRIBE EVALUATION, and the rows of
``finetune_evaluation(id)``, with the SQL types their table forms unnest the JSON into (as :mod:`jobs.shapes`)."""

from __future__ import annotations

import json
from typing import Any

from .metrics import BUILTIN

SHOW_FIELDS = {"id": "VARCHAR", "status": "VARCHAR", "models": "VARCHAR[]", "rows": "BIGINT",
               "progress": "DOUBLE", "created_on": "BIGINT", "finished_on": "BIGINT"}
ROW_FIELDS: dict[str, Any] = {
    "id": "VARCHAR", "model": "VARCHAR", "prompt": "VARCHAR", "completion": "VARCHAR", "prediction": "VARCHAR",
    **{m: "DOUBLE" for m in BUILTIN},  # a column per built-in metric, from the stored MAP of scores
    "user_metrics": "MAP(VARCHAR, DOUBLE)", "prompt_tokens": "BIGINT", "completion_tokens": "BIGINT",
    "latency_ms": "DOUBLE",
}

#: One entry of the summary's ``comparison`` (``FROM finetune_comparison(id)``): metric, models A and B, their
#: scores, B minus A, B's wins/ties/losses per row, the 95% bootstrap interval, the test and its p-value.
COMPARISON_FIELDS = {
    "metric": "VARCHAR", "a": "VARCHAR", "b": "VARCHAR", "a_score": "DOUBLE", "b_score": "DOUBLE",
    "difference": "DOUBLE", "wins": "BIGINT", "ties": "BIGINT", "losses": "BIGINT", "rows": "BIGINT",
    "ci_low": "DOUBLE", "ci_high": "DOUBLE", "test": "VARCHAR", "p_value": "DOUBLE", "significant": "BOOLEAN",
    "better": "VARCHAR",
}

def from_json_type(fields: dict[str, Any]) -> str:
    """``from_json``'s structure for a JSON array of the shape."""
    return json.dumps([fields])


def show(ev: dict[str, Any]) -> dict[str, Any]:
    return {"id": ev["id"], "status": ev["status"], "models": json.loads(ev["models"]), "rows": ev["rows"],
            "progress": round(float(ev["progress"] or 0.0), 4), "created_on": ev["created_on"],
            "finished_on": ev["finished_on"]}


def describe(ev: dict[str, Any]) -> dict[str, Any]:
    """SHOW's fields, the query and options, the summary once done, the error if it failed."""
    out = show(ev)
    out.update(query=ev["query"], options=json.loads(ev["options"]), skipped_rows=ev["skipped_rows"],
               summary=json.loads(ev["summary"]) if ev["summary"] else None)
    if ev["error"]:
        out["error"] = {"message": ev["error"]}
    return out


def row(r: dict[str, Any]) -> dict[str, Any]:
    scores = r.get("scores") or {}
    out = {k: scores.get(k) if k in BUILTIN else r.get(k) for k in ROW_FIELDS}
    out["user_metrics"] = json.loads(r["user_metrics"]) if r.get("user_metrics") else None
    return out
