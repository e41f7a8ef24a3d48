"""The ``duckdb_ft`` schema inside the user's database: migrations, and every read and write of it.

Migrations are an append-only list of named functions; each runs once, in one transaction with its record in
``duckdb_ft.migrations``, so migrating again is a no-op and runs on every open.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

SCHEMA = "duckdb_ft"
Migration = Callable[[Any], None]
MIGRATIONS: list[Migration] = []
migration = MIGRATIONS.append

JOB_STATUSES = ("PENDING", "IN_PROGRESS", "SUCCESS", "ERROR", "CANCELLED")
ACTIVE = ("PENDING", "IN_PROGRESS")


def now_ms() -> int:
    return int(time.time() * 1000)


@migration
def m001_jobs_metrics_models(cur: Any) -> None:
    cur.execute(f"""
        CREATE TABLE {SCHEMA}.jobs (
            id VARCHAR PRIMARY KEY,
            schema_name VARCHAR NOT NULL,
            model_name VARCHAR NOT NULL,
            base_model VARCHAR NOT NULL,
            training_query VARCHAR NOT NULL,
            validation_query VARCHAR,
            options VARCHAR NOT NULL,
            owner VARCHAR,
            status VARCHAR NOT NULL,
            progress DOUBLE NOT NULL DEFAULT 0,
            created_on BIGINT NOT NULL,
            started_on BIGINT,
            finished_on BIGINT,
            train_rows BIGINT,
            validation_rows BIGINT,
            validation_source VARCHAR,
            skipped_rows BIGINT,
            truncated_rows BIGINT,
            train_tokens BIGINT,
            trained_tokens BIGINT,
            total_steps BIGINT,
            step BIGINT,
            training_loss DOUBLE,
            validation_loss DOUBLE,
            error VARCHAR
        )""")
    # The rows a job trains on, copied from its queries at CREATE: the job is reproducible and resumable even
    # if the user's tables change or the process dies before the job starts.
    cur.execute(f"""
        CREATE TABLE {SCHEMA}.job_rows (
            job_id VARCHAR NOT NULL,
            split VARCHAR NOT NULL,
            idx BIGINT NOT NULL,
            prompt VARCHAR NOT NULL,
            completion VARCHAR NOT NULL
        )""")
    cur.execute(f"""
        CREATE TABLE {SCHEMA}.metrics (
            job_id VARCHAR NOT NULL,
            step BIGINT NOT NULL,
            epoch DOUBLE NOT NULL,
            training_loss DOUBLE,
            validation_loss DOUBLE,
            learning_rate DOUBLE,
            tokens BIGINT,
            elapsed_s DOUBLE
        )""")
    cur.execute(f"""
        CREATE TABLE {SCHEMA}.checkpoints (
            job_id VARCHAR PRIMARY KEY,
            step BIGINT NOT NULL,
            state BLOB NOT NULL,
            saved_on BIGINT NOT NULL
        )""")
    cur.execute(f"""
        CREATE TABLE {SCHEMA}.models (
            schema_name VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            base_model VARCHAR NOT NULL,
            lora_config VARCHAR NOT NULL,
            adapter BLOB NOT NULL,
            job_id VARCHAR NOT NULL,
            owner VARCHAR,
            created_on BIGINT NOT NULL,
            training_loss DOUBLE,
            validation_loss DOUBLE,
            PRIMARY KEY (schema_name, name)
        )""")


@migration
def m002_roles_and_grants(cur: Any) -> None:
    cur.execute(f"CREATE TABLE {SCHEMA}.roles (name VARCHAR PRIMARY KEY, created_on BIGINT NOT NULL)")
    # member_kind USER: a user may use the role; ROLE: the member role inherits its privileges (a hierarchy).
    cur.execute(f"""CREATE TABLE {SCHEMA}.role_members (
        role VARCHAR NOT NULL, member_kind VARCHAR NOT NULL, member VARCHAR NOT NULL, granted_on BIGINT NOT NULL)""")
    cur.execute(f"""CREATE TABLE {SCHEMA}.grants (
        role VARCHAR NOT NULL, privilege VARCHAR NOT NULL, object_kind VARCHAR NOT NULL,
        object_name VARCHAR NOT NULL, granted_on BIGINT NOT NULL)""")
    # Tables and views created by a role other than the administrator belong to it.
    cur.execute(f"""CREATE TABLE {SCHEMA}.object_owners (
        object_kind VARCHAR NOT NULL, object_name VARCHAR NOT NULL, owner VARCHAR NOT NULL)""")
    cur.execute(f"INSERT INTO {SCHEMA}.roles VALUES ('public', ?)", [now_ms()])


def migrate(cur: Any) -> list[str]:
    """Apply the migrations not yet recorded; return their names."""
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    cur.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.migrations (name VARCHAR PRIMARY KEY, applied_on BIGINT)")
    done = {r[0] for r in cur.execute(f"SELECT name FROM {SCHEMA}.migrations").fetchall()}
    applied = []
    for m in MIGRATIONS:
        if m.__name__ in done:
            continue
        cur.execute("BEGIN TRANSACTION")
        try:
            m(cur)
            cur.execute(f"INSERT INTO {SCHEMA}.migrations VALUES (?, ?)", [m.__name__, now_ms()])
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        applied.append(m.__name__)
    return applied


def one(cur: Any, sql: str, params: list | None = None) -> tuple | None:
    """The first row of a query, or None. Fetches everything: DuckDB 2 keeps a connection busy until a result
    is exhausted, so a bare ``fetchone()`` would block the next statement on the same cursor."""
    rows = cur.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def _dicts(rel: Any) -> list[dict[str, Any]]:
    cols = [d[0] for d in rel.description]
    return [dict(zip(cols, row)) for row in rel.fetchall()]


# -------------------------------------------------------------------------------------------------------- jobs


def insert_job(cur: Any, job: dict[str, Any]) -> None:
    cols = ", ".join(job)
    cur.execute(f"INSERT INTO {SCHEMA}.jobs ({cols}) VALUES ({', '.join('?' * len(job))})", list(job.values()))


def update_job(cur: Any, job_id: str, **fields: Any) -> None:
    sets = ", ".join(f"{k} = ?" for k in fields)
    cur.execute(f"UPDATE {SCHEMA}.jobs SET {sets} WHERE id = ?", [*fields.values(), job_id])


def get_job(cur: Any, job_id: str) -> dict[str, Any] | None:
    rows = _dicts(cur.execute(f"SELECT * FROM {SCHEMA}.jobs WHERE id = ?", [job_id]))
    return rows[0] if rows else None


def list_jobs(cur: Any, statuses: Iterable[str] | None = None) -> list[dict[str, Any]]:
    if statuses is None:
        return _dicts(cur.execute(f"SELECT * FROM {SCHEMA}.jobs ORDER BY created_on, id"))
    statuses = list(statuses)
    marks = ", ".join("?" * len(statuses))
    return _dicts(cur.execute(f"SELECT * FROM {SCHEMA}.jobs WHERE status IN ({marks}) ORDER BY created_on, id",
                              statuses))


def name_in_use(cur: Any, schema: str, name: str) -> str | None:
    """What holds this model name: 'model', an active job's id, or None."""
    if one(cur, f"SELECT 1 FROM {SCHEMA}.models WHERE schema_name = ? AND name = ?", [schema, name]):
        return "model"
    row = one(cur, f"SELECT id FROM {SCHEMA}.jobs WHERE schema_name = ? AND model_name = ? "
                   "AND status IN ('PENDING', 'IN_PROGRESS')", [schema, name])
    return row[0] if row else None


# ---------------------------------------------------------------------------------------------------- job rows


def snapshot_rows(cur: Any, job_id: str, query: str, split: str, holdout_percent: int = 0) -> dict[str, int]:
    """Copy a query's (prompt, completion) rows into ``job_rows`` inside DuckDB (streamed, never in Python).

    With ``holdout_percent`` > 0, rows whose hash falls under it go to split 'validation' instead of ``split``:
    deterministic, and independent of the query's row order. Returns counts: rows, skipped (a NULL).
    """
    source = f"(\n{query}\n) AS q"
    val = "validation"
    split_expr = (f"CASE WHEN hash(prompt, completion) % 100 < {int(holdout_percent)} THEN '{val}' ELSE '{split}' END"
                  if holdout_percent else f"'{split}'")
    cur.execute(f"""
        INSERT INTO {SCHEMA}.job_rows
        SELECT ?, {split_expr}, row_number() OVER () AS idx, prompt, completion
        FROM (SELECT prompt::VARCHAR AS prompt, completion::VARCHAR AS completion FROM {source})
        WHERE prompt IS NOT NULL AND completion IS NOT NULL""", [job_id])
    skipped = one(cur, f"SELECT count(*) FROM {source} WHERE prompt IS NULL OR completion IS NULL")[0]
    return {"skipped": int(skipped)}


def count_rows(cur: Any, job_id: str) -> dict[str, int]:
    rows = cur.execute(f"SELECT split, count(*) FROM {SCHEMA}.job_rows WHERE job_id = ? GROUP BY split",
                       [job_id]).fetchall()
    return {s: int(n) for s, n in rows}


def move_all_rows(cur: Any, job_id: str, src: str, dst: str) -> None:
    cur.execute(f"UPDATE {SCHEMA}.job_rows SET split = ? WHERE job_id = ? AND split = ?", [dst, job_id, src])


def read_rows(cur: Any, job_id: str, split: str, batch_rows: int = 4096) -> Any:
    """A pyarrow RecordBatchReader over (prompt, completion) of one split, in a stable order."""
    return cur.sql(
        f"SELECT prompt, completion FROM {SCHEMA}.job_rows WHERE job_id = ? AND split = ? ORDER BY idx",
        params=[job_id, split]).to_arrow_reader(batch_rows)


# ----------------------------------------------------------------------------------------------------- metrics


def insert_metric(cur: Any, job_id: str, m: dict[str, Any]) -> None:
    cur.execute(f"INSERT INTO {SCHEMA}.metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [job_id, m["step"], m["epoch"], m.get("training_loss"), m.get("validation_loss"),
                 m.get("learning_rate"), m.get("tokens"), m.get("elapsed_s")])


def metrics(cur: Any, job_id: str) -> list[dict[str, Any]]:
    return _dicts(cur.execute(
        f"SELECT step, epoch, training_loss, validation_loss, learning_rate, tokens, elapsed_s "
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


# ------------------------------------------------------------------------------------------------------ models


def get_model(cur: Any, schema: str, name: str) -> dict[str, Any] | None:
    rows = _dicts(cur.execute(f"SELECT * FROM {SCHEMA}.models WHERE schema_name = ? AND name = ?", [schema, name]))
    return rows[0] if rows else None


def list_models(cur: Any, schema: str | None = None) -> list[dict[str, Any]]:
    cols = "schema_name, name, base_model, job_id, owner, created_on, training_loss, validation_loss, lora_config"
    if schema is None:
        return _dicts(cur.execute(f"SELECT {cols} FROM {SCHEMA}.models ORDER BY schema_name, name"))
    return _dicts(cur.execute(f"SELECT {cols} FROM {SCHEMA}.models WHERE schema_name = ? ORDER BY name", [schema]))


def list_models_named(cur: Any, schema: str, name: str) -> dict[str, Any] | None:
    """A model's row without its adapter weights (cheap: COMPLETE looks models up on every chunk)."""
    rows = _dicts(cur.execute(
        f"SELECT schema_name, name, base_model, lora_config, job_id, owner, created_on FROM {SCHEMA}.models "
        "WHERE schema_name = ? AND name = ?", [schema, name]))
    return rows[0] if rows else None


def model_adapter(cur: Any, job_id: str) -> bytes:
    return bytes(one(cur, f"SELECT adapter FROM {SCHEMA}.models WHERE job_id = ?", [job_id])[0])


def has_catalog(cur: Any) -> bool:
    return one(cur, "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = 'models'",
               [SCHEMA]) is not None


def schema_exists(cur: Any, schema: str) -> bool:
    return one(cur, "SELECT 1 FROM information_schema.schemata WHERE schema_name = ?", [schema]) is not None


def finish_job_with_model(cur: Any, job_id: str, model: dict[str, Any], job_fields: dict[str, Any]) -> None:
    """Store the model and mark its job SUCCESS in one transaction: either both exist, or neither."""
    cur.execute("BEGIN TRANSACTION")
    try:
        cols = ", ".join(model)
        cur.execute(f"INSERT INTO {SCHEMA}.models ({cols}) VALUES ({', '.join('?' * len(model))})",
                    list(model.values()))
        update_job(cur, job_id, **job_fields)
        cur.execute(f"DELETE FROM {SCHEMA}.checkpoints WHERE job_id = ?", [job_id])
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise


def drop_model(cur: Any, schema: str, name: str) -> bool:
    return bool(cur.execute(f"DELETE FROM {SCHEMA}.models WHERE schema_name = ? AND name = ? RETURNING name",
                            [schema, name]).fetchall())


# ---------------------------------------------------------------------------------------------- roles and grants


def role_exists(cur: Any, role: str) -> bool:
    return one(cur, f"SELECT 1 FROM {SCHEMA}.roles WHERE name = ?", [role]) is not None


def create_role(cur: Any, role: str) -> None:
    cur.execute(f"INSERT INTO {SCHEMA}.roles VALUES (?, ?)", [role, now_ms()])


def drop_role(cur: Any, role: str) -> None:
    cur.execute("BEGIN TRANSACTION")
    try:
        cur.execute(f"DELETE FROM {SCHEMA}.roles WHERE name = ?", [role])
        cur.execute(f"DELETE FROM {SCHEMA}.role_members WHERE role = ? OR (member_kind = 'ROLE' AND member = ?)",
                    [role, role])
        cur.execute(f"DELETE FROM {SCHEMA}.grants WHERE role = ?", [role])
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise


def list_roles(cur: Any) -> list[dict[str, Any]]:
    return _dicts(cur.execute(f"SELECT name, created_on FROM {SCHEMA}.roles ORDER BY name"))


def add_member(cur: Any, role: str, kind: str, member: str) -> None:
    if not one(cur, f"SELECT 1 FROM {SCHEMA}.role_members WHERE role = ? AND member_kind = ? AND member = ?",
               [role, kind, member]):
        cur.execute(f"INSERT INTO {SCHEMA}.role_members VALUES (?, ?, ?, ?)", [role, kind, member, now_ms()])


def remove_member(cur: Any, role: str, kind: str, member: str) -> bool:
    return bool(cur.execute(f"DELETE FROM {SCHEMA}.role_members WHERE role = ? AND member_kind = ? AND member = ? "
                            "RETURNING role", [role, kind, member]).fetchall())


def members(cur: Any) -> list[tuple[str, str, str]]:
    """Every (role, member_kind, member), oldest first."""
    return cur.execute(f"SELECT role, member_kind, member FROM {SCHEMA}.role_members ORDER BY granted_on").fetchall()


def add_grant(cur: Any, role: str, privilege: str, kind: str, name: str) -> None:
    if not one(cur, f"SELECT 1 FROM {SCHEMA}.grants WHERE role = ? AND privilege = ? AND object_kind = ? "
                    "AND object_name = ?", [role, privilege, kind, name]):
        cur.execute(f"INSERT INTO {SCHEMA}.grants VALUES (?, ?, ?, ?, ?)", [role, privilege, kind, name, now_ms()])


def remove_grant(cur: Any, role: str, privilege: str, kind: str, name: str) -> bool:
    return bool(cur.execute(f"DELETE FROM {SCHEMA}.grants WHERE role = ? AND privilege = ? AND object_kind = ? "
                            "AND object_name = ? RETURNING role", [role, privilege, kind, name]).fetchall())


def grants(cur: Any) -> list[tuple[str, str, str, str]]:
    """Every (role, privilege, object_kind, object_name)."""
    return cur.execute(f"SELECT role, privilege, object_kind, object_name FROM {SCHEMA}.grants "
                       "ORDER BY role, object_kind, object_name, privilege").fetchall()


def set_owner(cur: Any, kind: str, name: str, owner: str) -> None:
    cur.execute(f"DELETE FROM {SCHEMA}.object_owners WHERE object_kind = ? AND object_name = ?", [kind, name])
    cur.execute(f"INSERT INTO {SCHEMA}.object_owners VALUES (?, ?, ?)", [kind, name, owner])


def owner_of(cur: Any, kind: str, name: str) -> str | None:
    if kind == "MODEL":
        schema, model = name.split(".", 1)
        row = one(cur, f"SELECT owner FROM {SCHEMA}.models WHERE schema_name = ? AND name = ?", [schema, model])
    else:
        row = one(cur, f"SELECT owner FROM {SCHEMA}.object_owners WHERE object_kind = ? AND object_name = ?",
                  [kind, name])
    return row[0] if row else None


def set_model_owner(cur: Any, schema: str, name: str, owner: str) -> None:
    cur.execute(f"UPDATE {SCHEMA}.models SET owner = ? WHERE schema_name = ? AND name = ?", [owner, schema, name])


def view_sql(cur: Any, qualified: str) -> str | None:
    schema, name = qualified.split(".", 1)
    row = one(cur, "SELECT sql FROM duckdb_views() WHERE schema_name = ? AND view_name = ? AND NOT internal",
              [schema, name])
    return row[0] if row else None


def relation_kind(cur: Any, qualified: str) -> str | None:
    """'TABLE', 'VIEW' or None for a qualified name in the database."""
    schema, name = qualified.split(".", 1)
    row = one(cur, "SELECT table_type FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
              [schema, name])
    if row is None:
        return None
    return "VIEW" if "VIEW" in row[0].upper() else "TABLE"
