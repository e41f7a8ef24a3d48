"""The shapes of FINETUNE's answers: one source for the JSON that SHOW, DESCRIBE and finetune_history return and
for the SQL types that their table forms (``FROM finetune('DESCRIBE', id)``) unnest it into.

Each shape is a dict from field to DuckDB type; the functions below build the JSON in that field order, and
:func:`from_json_type` writes the type that ``from_json`` takes.
"""

from __future__ import annotations

import json
from typing import Any

SHOW_FIELDS = {"id": "VARCHAR", "status": "VARCHAR", "base_model": "VARCHAR", "created_on": "BIGINT"}
DESCRIBE_FIELDS: dict[str, Any] = {
    "id": "VARCHAR", "status": "VARCHAR", "progress": "DOUBLE", "base_model": "VARCHAR", "created_on": "BIGINT",
    "started_on": "BIGINT", "finished_on": "BIGINT", "model": "VARCHAR", "training_data": "VARCHAR",
    "validation_data": "VARCHAR", "trained_tokens": "BIGINT",
    "training_result": {"training_loss": "DOUBLE", "validation_loss": "DOUBLE"}, "options": "JSON", "cleaning": "JSON",
    "train_rows": "BIGINT", "validation_rows": "BIGINT", "held_out_rows": "BIGINT", "skipped_rows": "BIGINT",
    "truncated_rows": "BIGINT",
    "step": "BIGINT", "total_steps": "BIGINT", "best_step": "BIGINT", "stopped_early": "BOOLEAN",
    "workers": "BIGINT", "model_version": "VARCHAR", "parent_model": "VARCHAR",
    "method_metrics": "MAP(VARCHAR, DOUBLE)", "error": {"message": "VARCHAR"},
}
SWEEP_FIELDS = {"rank": "BIGINT", "job_id": "VARCHAR", "model": "VARCHAR", "status": "VARCHAR", "swept": "JSON",
                "validation_loss": "DOUBLE", "training_loss": "DOUBLE", "best_step": "BIGINT",
                "trained_tokens": "BIGINT", "wall_s": "DOUBLE", "eval_metric": "VARCHAR", "eval_score": "DOUBLE",
                "options": "JSON"}
HISTORY_FIELDS = {"step": "BIGINT", "epoch": "DOUBLE", "training_loss": "DOUBLE", "validation_loss": "DOUBLE",
                  "learning_rate": "DOUBLE", "tokens": "BIGINT", "elapsed_s": "DOUBLE",
                  "method_metrics": "MAP(VARCHAR, DOUBLE)"}


def from_json_type(fields: dict[str, Any], *, array: bool = False) -> str:
    """The structure argument of DuckDB's ``from_json`` for a shape (a JSON array of it with ``array``)."""
    return json.dumps([fields] if array else fields)


def show(job: dict[str, Any]) -> dict[str, Any]:
    """One job as FINETUNE('SHOW') lists it."""
    return {k: job[k] for k in SHOW_FIELDS}


def describe(job: dict[str, Any]) -> dict[str, Any]:
    """A job as Cortex's FINETUNE('DESCRIBE') shows it, plus duckdb-ft's own fields; ``error`` only when it failed."""
    values: dict[str, Any] = {
        "progress": round(float(job["progress"] or 0.0), 4),
        "model": f"{job['schema_name']}.{job['model_name']}",
        "training_data": job["training_query"],
        "validation_data": job["validation_query"] or job["validation_source"],
        # rows of the training query held out to validate, not trained on (no validation query): 0 when a
        # validation query validates, or every row trains (validation_fraction 0, or too few rows to split)
        "held_out_rows": 0 if job["validation_query"] else (job["validation_rows"] or 0),
        "trained_tokens": job["trained_tokens"] or 0,
        "training_result": {"training_loss": job["training_loss"], "validation_loss": job["validation_loss"]},
        "options": json.loads(job["options"]),
        "cleaning": json.loads(job["cleaning"]) if job.get("cleaning") else None,
        "stopped_early": bool(job.get("stopped_early")),
        "workers": _workers(job["options"]),
        "model_version": job.get("model_version") or "v1",  # the version the job creates
        "parent_model": job.get("parent_model"),  # the model version it continues (NULL: from a base model)
        # dpo, kto: the latest of TRL's metrics (rewards/chosen, ..., eval_rewards/accuracies); NULL for sft
        "method_metrics": json.loads(job["method_metrics"]) if job.get("method_metrics") else None,
        "error": {"message": job["error"]} if job["error"] else None,
    }
    out = {k: values[k] if k in values else job[k] for k in DESCRIBE_FIELDS}
    if out["error"] is None:
        del out["error"]
    return out


def _workers(options: str) -> int:
    """Training processes of the job: devices times nodes (1 for jobs from before these options)."""
    o = json.loads(options)
    return int(o.get("devices", 1)) * int(o.get("nodes", 1))


def history(metric: dict[str, Any]) -> dict[str, Any]:
    """One row of finetune_history."""
    return {k: metric.get(k) for k in HISTORY_FIELDS}
