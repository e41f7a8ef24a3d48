"""Evaluations (``finetune('EVALUATE')``): one row each, with its summary JSON, and the per-row results."""

from __future__ import annotations

from typing import Any, Sequence

from . import SCHEMA, dicts, registered

#: Columns of ``evaluation_rows``: a built-in metric's score per row in ``scores`` (a MAP of metric name to score,
#: so a new metric needs no migration), user metrics' in ``user_metrics`` (JSON).
ROW_COLUMNS = ("evaluation_id", "model", "idx", "id", "prompt", "completion", "prediction", "scores",
               "user_metrics", "prompt_tokens", "completion_tokens", "latency_ms")


def insert(cur: Any, evaluation: dict[str, Any]) -> None:
    cols = ", ".join(evaluation)
    cur.execute(f"INSERT INTO {SCHEMA}.evaluations ({cols}) VALUES ({', '.join('?' * len(evaluation))})",
                list(evaluation.values()))


def update(cur: Any, evaluation_id: str, **fields: Any) -> None:
    sets = ", ".join(f"{k} = ?" for k in fields)
    cur.execute(f"UPDATE {SCHEMA}.evaluations SET {sets} WHERE id = ?", [*fields.values(), evaluation_id])


def get(cur: Any, evaluation_id: str) -> dict[str, Any] | None:
    rows = dicts(cur.execute(f"SELECT * FROM {SCHEMA}.evaluations WHERE id = ?", [evaluation_id]))
    return rows[0] if rows else None


def list_all(cur: Any) -> list[dict[str, Any]]:
    return dicts(cur.execute(f"SELECT * FROM {SCHEMA}.evaluations ORDER BY created_on, id"))


def insert_rows(cur: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Per-row results; each dict has the keys of ROW_COLUMNS, ``scores`` a dict of metric name to score."""
    if not rows:
        return
    import pyarrow as pa

    table = pa.Table.from_pylist([{c: r.get(c) for c in ROW_COLUMNS if c != "scores"} for r in rows])
    scores = pa.array([list((r.get("scores") or {}).items()) for r in rows], pa.map_(pa.string(), pa.float64()))
    table = table.append_column("scores", scores)
    quoted = ", ".join(f'"{c}"' for c in ROW_COLUMNS)
    with registered(cur, "__ft_evaluation_rows", table):
        cur.execute(f"INSERT INTO {SCHEMA}.evaluation_rows ({quoted}) SELECT {quoted} FROM __ft_evaluation_rows")


def rows(cur: Any, evaluation_id: str, models: Sequence[str]) -> list[dict[str, Any]]:
    """The per-row results, model by model (in ``models``' order), each in the query's row order."""
    cols = ", ".join(f'"{c}"' for c in ROW_COLUMNS if c not in ("evaluation_id", "idx"))
    return dicts(cur.execute(
        f"SELECT {cols} FROM {SCHEMA}.evaluation_rows WHERE evaluation_id = ? "
        "ORDER BY list_position(?::VARCHAR[], model), idx", [evaluation_id, list(models)]))
