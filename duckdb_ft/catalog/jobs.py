"""Jobs and what they own: the job rows, their snapshot of training rows, per-step metrics, checkpoints."""

from __future__ import annotations

from typing import Any, Iterable

from . import SCHEMA, dicts, now_ms, one

def insert_job(cur: Any, job: dict[str, Any]) -> None:
    cols = ", ".join(job)
    cur.execute(f"INSERT INTO {SCHEMA}.jobs ({cols}) VALUES ({', '.join('?' * len(job))})", list(job.values()))


def update_job(cur: Any, job_id: str, **fields: Any) -> None:
    sets = ", ".join(f"{k} = ?" for k in fields)
    cur.execute(f"UPDATE {SCHEMA}.jobs SET {sets} WHERE id = ?", [*fields.values(), job_id])


def get_job(cur: Any, job_id: str) -> dict[str, Any] | None:
    rows = dicts(cur.execute(f"SELECT * FROM {SCHEMA}.jobs WHERE id = ?", [job_id]))
    return rows[0] if rows else None


def list_jobs(cur: Any, statuses: Iterable[str] | None = None) -> list[dict[str, Any]]:
    if statuses is None:
        return dicts(cur.execute(f"SELECT * FROM {SCHEMA}.jobs ORDER BY created_on, id"))
    statuses = list(statuses)
    marks = ", ".join("?" * len(statuses))
    return dicts(cur.execute(f"SELECT * FROM {SCHEMA}.jobs WHERE status IN ({marks}) ORDER BY created_on, id",
                              statuses))


def name_in_use(cur: Any, schema: str, name: str) -> str | None:
    """What holds this model name: 'model', an active job's id, or None."""
    if one(cur, f"SELECT 1 FROM {SCHEMA}.models WHERE schema_name = ? AND name = ?", [schema, name]):
        return "model"
    row = one(cur, f"SELECT id FROM {SCHEMA}.jobs WHERE schema_name = ? AND model_name = ? "
                   "AND status IN ('PENDING', 'IN_PROGRESS')", [schema, name])
    return row[0] if row else None


# ---------------------------------------------------------------------------------------------------- job rows


def store_staged_rows(cur: Any, job_id: str, staged: str) -> int:
    """Copy a staged snapshot's kept rows (:mod:`duckdb_ft.prep.stage`) into ``job_rows``, inside DuckDB; how many.

    ``idx`` is the row's number in its query's result, so the stored order is the query's order."""
    return int(cur.execute(f"""
        INSERT INTO {SCHEMA}.job_rows (job_id, split, idx, prompt, completion, rejected, label)
        SELECT ?, split, row, prompt, completion, rejected, label FROM {staged} WHERE dropped IS NULL""", [job_id]).fetchall()[0][0])


def count_rows(cur: Any, job_id: str) -> dict[str, int]:
    rows = cur.execute(f"SELECT split, count(*) FROM {SCHEMA}.job_rows WHERE job_id = ? GROUP BY split",
                       [job_id]).fetchall()
    return {s: int(n) for s, n in rows}


def read_rows(cur: Any, job_id: str, split: str, batch_rows: int = 4096) -> Any:
    """A pyarrow RecordBatchReader over (prompt, completion, rejected, label) of one split, in a stable order
    (rejected: a dpo row's; label: a kto row's; NULL otherwise)."""
    return cur.sql(
        f"SELECT prompt, completion, rejected, label FROM {SCHEMA}.job_rows WHERE job_id = ? AND split = ? ORDER BY idx",
        params=[job_id, split]).to_arrow_reader(batch_rows)


# ----------------------------------------------------------------------------------------------------- metrics


def insert_metric(cur: Any, job_id: str, m: dict[str, Any]) -> None:
    found = m.get("method_metrics") or None  # a preference method's (TRL's names): a MAP, NULL for sft
    cur.execute(f"INSERT INTO {SCHEMA}.metrics (job_id, step, epoch, training_loss, validation_loss, learning_rate, "
                f"tokens, elapsed_s, method_metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
                f"CASE WHEN ?::VARCHAR[] IS NULL THEN NULL ELSE map(?::VARCHAR[], ?::DOUBLE[]) END)",
                [job_id, m["step"], m["epoch"], m.get("training_loss"), m.get("validation_loss"),
                 m.get("learning_rate"), m.get("tokens"), m.get("elapsed_s"),
                 *([None, None, None] if found is None else [list(found), list(found), list(found.values())])])


def metrics(cur: Any, job_id: str) -> list[dict[str, Any]]:
    return dicts(cur.execute(
        f"SELECT step, epoch, training_loss, validation_loss, learning_rate, tokens, elapsed_s, method_metrics "
        f"FROM {SCHEMA}.metrics WHERE job_id = ? ORDER BY step, validation_loss NULLS FIRST", [job_id]))


def delete_metrics_after(cur: Any, job_id: str, step: int) -> None:
    cur.execute(f"DELETE FROM {SCHEMA}.metrics WHERE job_id = ? AND step > ?", [job_id, step])


# ------------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(cur: Any, job_id: str, step: int, state: bytes) -> None:
    cur.execute(f"INSERT OR REPLACE INTO {SCHEMA}.checkpoints VALUES (?, ?, ?, ?)", [job_id, step, state, now_ms()])


def load_checkpoint(cur: Any, job_id: str) -> tuple[int, bytes] | None:
    row = one(cur, f"SELECT step, state FROM {SCHEMA}.checkpoints WHERE job_id = ?", [job_id])
    return (int(row[0]), bytes(row[1])) if row else None


def delete_checkpoint(cur: Any, job_id: str) -> None:
    cur.execute(f"DELETE FROM {SCHEMA}.checkpoints WHERE job_id = ?", [job_id])
