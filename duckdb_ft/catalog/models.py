"""Fine-tuned models: one row each, the LoRA adapter as safetensors bytes beside its config and job."""

from __future__ import annotations

from typing import Any

from . import SCHEMA, dicts, one, transaction
from .jobs import delete_checkpoint, update_job

def get_model(cur: Any, schema: str, name: str) -> dict[str, Any] | None:
    rows = dicts(cur.execute(f"SELECT * FROM {SCHEMA}.models WHERE schema_name = ? AND name = ?", [schema, name]))
    return rows[0] if rows else None


def list_models(cur: Any, schema: str | None = None) -> list[dict[str, Any]]:
    cols = "schema_name, name, base_model, job_id, owner, created_on, training_loss, validation_loss, lora_config"
    if schema is None:
        return dicts(cur.execute(f"SELECT {cols} FROM {SCHEMA}.models ORDER BY schema_name, name"))
    return dicts(cur.execute(f"SELECT {cols} FROM {SCHEMA}.models WHERE schema_name = ? ORDER BY name", [schema]))


def list_models_named(cur: Any, schema: str, name: str) -> dict[str, Any] | None:
    """A model's row without its adapter weights (cheap: COMPLETE looks models up on every chunk)."""
    rows = dicts(cur.execute(
        f"SELECT schema_name, name, base_model, lora_config, job_id, owner, created_on FROM {SCHEMA}.models "
        "WHERE schema_name = ? AND name = ?", [schema, name]))
    return rows[0] if rows else None


def model_adapter(cur: Any, job_id: str) -> bytes:
    return bytes(one(cur, f"SELECT adapter FROM {SCHEMA}.models WHERE job_id = ?", [job_id])[0])


def finish_job_with_model(cur: Any, job_id: str, model: dict[str, Any], job_fields: dict[str, Any]) -> None:
    """Store the model and mark its job SUCCESS in one transaction: either both exist, or neither."""
    with transaction(cur):
        cols = ", ".join(model)
        cur.execute(f"INSERT INTO {SCHEMA}.models ({cols}) VALUES ({', '.join('?' * len(model))})",
                    list(model.values()))
        update_job(cur, job_id, **job_fields)
        delete_checkpoint(cur, job_id)


def drop_model(cur: Any, schema: str, name: str) -> bool:
    return bool(cur.execute(f"DELETE FROM {SCHEMA}.models WHERE schema_name = ? AND name = ? RETURNING name",
                            [schema, name]).fetchall())




def set_model_owner(cur: Any, schema: str, name: str, owner: str) -> None:
    cur.execute(f"UPDATE {SCHEMA}.models SET owner = ? WHERE schema_name = ? AND name = ?", [owner, schema, name])
