"""Fine-tuned models: one row per version, the LoRA adapter as safetensors bytes beside its config and job.

A model is the set of rows of one (schema_name, name); each row is a version (``v1``, ``v2``, ...), and exactly one
of them is the model's default (``is_default``): what the bare name means in COMPLETE, EVALUATE, export, DESCRIBE.
Owner and grants are the model's: every version's row carries the same owner.
"""

from __future__ import annotations

import re
from typing import Any

from . import SCHEMA, dicts, one, transaction
from .jobs import delete_checkpoint, update_job

_LIGHT = ("schema_name, name, version, is_default, base_model, lora_config, job_id, owner, created_on, "
          "training_loss, validation_loss")


def _version_clause(version: str | None) -> tuple[str, list]:
    return ("AND is_default", []) if version is None else ("AND version = ?", [version])


def get_model(cur: Any, schema: str, name: str, version: str | None = None) -> dict[str, Any] | None:
    """A model's row: its default version (``version`` None) or that version; None if there is none."""
    clause, params = _version_clause(version)
    rows = dicts(cur.execute(f"SELECT * FROM {SCHEMA}.models WHERE schema_name = ? AND name = ? {clause}",
                             [schema, name, *params]))
    return rows[0] if rows else None


def list_models(cur: Any, schema: str | None = None) -> list[dict[str, Any]]:
    """One row per model (its default version), with ``versions``: how many it has."""
    cols = ("schema_name, name, version AS default_version, base_model, job_id, owner, created_on, training_loss, "
            "validation_loss, lora_config, (SELECT count(*) FROM {S}.models v WHERE v.schema_name = m.schema_name "
            "AND v.name = m.name) AS versions").format(S=SCHEMA)
    where, params = ("WHERE is_default", []) if schema is None else ("WHERE is_default AND schema_name = ?", [schema])
    return dicts(cur.execute(f"SELECT {cols} FROM {SCHEMA}.models m {where} ORDER BY schema_name, name", params))


def list_models_named(cur: Any, schema: str, name: str, version: str | None = None) -> dict[str, Any] | None:
    """A model version's row without its adapter weights (cheap: COMPLETE looks models up on every chunk)."""
    clause, params = _version_clause(version)
    rows = dicts(cur.execute(f"SELECT {_LIGHT} FROM {SCHEMA}.models WHERE schema_name = ? AND name = ? {clause}",
                             [schema, name, *params]))
    return rows[0] if rows else None


def model_exists(cur: Any, schema: str, name: str) -> bool:
    return one(cur, f"SELECT 1 FROM {SCHEMA}.models WHERE schema_name = ? AND name = ? LIMIT 1", [schema, name]) \
        is not None


def list_versions(cur: Any, schema: str, name: str) -> list[dict[str, Any]]:
    """Every version of a model without the weights, oldest first."""
    return dicts(cur.execute(
        f"SELECT {_LIGHT}, parent_model, snapshot_rows FROM {SCHEMA}.models WHERE schema_name = ? AND name = ? "
        "ORDER BY created_on, version", [schema, name]))


def next_version(labels: list[str]) -> str:
    """``v<N+1>`` where N is the highest ``v<number>`` among ``labels`` (v1 when there is none)."""
    numbers = [int(m.group(1)) for v in labels if (m := re.fullmatch(r"v(\d+)", v or ""))]
    return f"v{max(numbers, default=0) + 1}"


def version_labels(cur: Any, schema: str, name: str) -> list[str]:
    """The versions a model has, and those its active jobs are creating."""
    rows = cur.execute(
        f"SELECT version FROM {SCHEMA}.models WHERE schema_name = ? AND name = ? UNION ALL "
        f"SELECT coalesce(model_version, 'v1') FROM {SCHEMA}.jobs WHERE schema_name = ? AND model_name = ? "
        "AND status IN ('PENDING', 'IN_PROGRESS')", [schema, name, schema, name]).fetchall()
    return [r[0] for r in rows]


def model_adapter(cur: Any, job_id: str) -> bytes:
    return bytes(one(cur, f"SELECT adapter FROM {SCHEMA}.models WHERE job_id = ?", [job_id])[0])


def parent_adapter(cur: Any, job_id: str) -> tuple[bytes, str] | None:
    """The adapter bytes and LoRA config JSON of the model that job ``job_id`` produced, or None if dropped."""
    row = one(cur, f"SELECT adapter, lora_config FROM {SCHEMA}.models WHERE job_id = ?", [job_id])
    return (bytes(row[0]), row[1]) if row else None


def finish_job_with_model(cur: Any, job_id: str, model: dict[str, Any], job_fields: dict[str, Any]) -> None:
    """Store the model version as its model's default, and mark its job SUCCESS, in one transaction: either both
    exist, or neither. A new version of an existing model takes the model's owner."""
    with transaction(cur):
        row = one(cur, f"SELECT owner FROM {SCHEMA}.models WHERE schema_name = ? AND name = ? LIMIT 1",
                  [model["schema_name"], model["name"]])
        if row is not None:
            model = {**model, "owner": row[0]}
        cur.execute(f"UPDATE {SCHEMA}.models SET is_default = false WHERE schema_name = ? AND name = ? "
                    "AND is_default", [model["schema_name"], model["name"]])
        model = {**model, "is_default": True}
        cols = ", ".join(model)
        cur.execute(f"INSERT INTO {SCHEMA}.models ({cols}) VALUES ({', '.join('?' * len(model))})",
                    list(model.values()))
        update_job(cur, job_id, **job_fields)
        delete_checkpoint(cur, job_id)


def set_default_version(cur: Any, schema: str, name: str, version: str) -> None:
    with transaction(cur):
        cur.execute(f"UPDATE {SCHEMA}.models SET is_default = (version = ?) WHERE schema_name = ? AND name = ?",
                    [version, schema, name])


def drop_model(cur: Any, schema: str, name: str) -> bool:
    """Drop every version of a model."""
    return bool(cur.execute(f"DELETE FROM {SCHEMA}.models WHERE schema_name = ? AND name = ? RETURNING name",
                            [schema, name]).fetchall())


def drop_version(cur: Any, schema: str, name: str, version: str) -> bool:
    """Drop one version that is not the default."""
    return bool(cur.execute(f"DELETE FROM {SCHEMA}.models WHERE schema_name = ? AND name = ? AND version = ? "
                            "AND NOT is_default RETURNING name", [schema, name, version]).fetchall())


def set_model_owner(cur: Any, schema: str, name: str, owner: str) -> None:
    cur.execute(f"UPDATE {SCHEMA}.models SET owner = ? WHERE schema_name = ? AND name = ?", [owner, schema, name])
