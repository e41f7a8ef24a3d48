"""Catalog migrations: an append-only list of named functions, each applied once, in one transaction with its record
in ``duckdb_ft.migrations``; migrating again is a no-op, so it runs on every open. Never edit a migration that has
shipped: append a new one.
"""

from __future__ import annotations

from typing import Any, Callable

from . import SCHEMA, now_ms, transaction

Migration = Callable[[Any], None]
MIGRATIONS: list[Migration] = []
migration = MIGRATIONS.append


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


@migration
def m006_best_checkpoint(cur: Any) -> None:
    # keep_best / early_stopping_patience: which evaluation's adapter a job stored, and whether it stopped early.
    cur.execute(f"ALTER TABLE {SCHEMA}.jobs ADD COLUMN best_step BIGINT")
    cur.execute(f"ALTER TABLE {SCHEMA}.jobs ADD COLUMN stopped_early BOOLEAN")


@migration
def m004_job_cleaning(cur: Any) -> None:
    # What CREATE's cleaning (options dedupe, pii, drop_conflicting) did to the snapshot, as JSON; DESCRIBE shows it.
    cur.execute(f"ALTER TABLE {SCHEMA}.jobs ADD COLUMN cleaning VARCHAR")


@migration
def m007_sweeps(cur: Any) -> None:
    # FINETUNE('SWEEP'): one row per sweep; its jobs point at it, and all but the first read the first's rows.
    cur.execute(f"""CREATE TABLE {SCHEMA}.sweeps (
        id VARCHAR PRIMARY KEY, schema_name VARCHAR NOT NULL, name VARCHAR NOT NULL, base_model VARCHAR NOT NULL,
        swept VARCHAR NOT NULL, owner VARCHAR, created_on BIGINT NOT NULL)""")
    cur.execute(f"ALTER TABLE {SCHEMA}.jobs ADD COLUMN sweep_id VARCHAR")
    cur.execute(f"ALTER TABLE {SCHEMA}.jobs ADD COLUMN snapshot_of VARCHAR")


@migration
def m003_evaluations(cur: Any) -> None:
    # finetune('EVALUATE'): one row per evaluation (its summary JSON once done), one per (model, evaluated row).
    cur.execute(f"""CREATE TABLE {SCHEMA}.evaluations (
        id VARCHAR PRIMARY KEY, owner VARCHAR, models VARCHAR NOT NULL, query VARCHAR NOT NULL,
        options VARCHAR NOT NULL, status VARCHAR NOT NULL, progress DOUBLE NOT NULL DEFAULT 0, rows BIGINT,
        skipped_rows BIGINT, created_on BIGINT NOT NULL, finished_on BIGINT, summary VARCHAR, error VARCHAR)""")
    cur.execute(f"""CREATE TABLE {SCHEMA}.evaluation_rows (
        evaluation_id VARCHAR NOT NULL, model VARCHAR NOT NULL, idx BIGINT NOT NULL, id VARCHAR,
        prompt VARCHAR, completion VARCHAR, prediction VARCHAR,
        exact_match DOUBLE, normalized_match DOUBLE, "contains" DOUBLE, token_f1 DOUBLE, rouge_l DOUBLE,
        bleu DOUBLE, chrf DOUBLE, json_valid DOUBLE, sql_match DOUBLE, completion_loss DOUBLE,
        user_metrics VARCHAR, prompt_tokens BIGINT, completion_tokens BIGINT, latency_ms DOUBLE)""")


@migration
def m008_model_lineage(cur: Any) -> None:
    # Continue training and lineage (issue 16): a job may start from a fine-tuned model's adapter (its parent);
    # each model records where it came from: parent, base weights' hash, the snapshot's size and hash, the queries,
    # the options and the final metrics (DESCRIBE MODEL shows them).
    cur.execute(f"ALTER TABLE {SCHEMA}.jobs ADD COLUMN parent_model VARCHAR")
    cur.execute(f"ALTER TABLE {SCHEMA}.jobs ADD COLUMN parent_job_id VARCHAR")
    for column, kind in (("parent_model", "VARCHAR"), ("parent_job_id", "VARCHAR"), ("base_weights_hash", "VARCHAR"),
                         ("training_query", "VARCHAR"), ("validation_query", "VARCHAR"), ("snapshot_rows", "BIGINT"),
                         ("snapshot_hash", "VARCHAR"), ("options", "VARCHAR"), ("metrics", "VARCHAR"),
                         ("adapter_hash", "VARCHAR")):
        cur.execute(f"ALTER TABLE {SCHEMA}.models ADD COLUMN {column} {kind}")


@migration
def m009_sweep_evaluation(cur: Any) -> None:
    # A sweep ranked by a task metric: its EVALUATE query and metric, and the scores once evaluated.
    for column in ("eval_query", "eval_metric", "evaluation_id", "eval_scores"):
        cur.execute(f"ALTER TABLE {SCHEMA}.sweeps ADD COLUMN {column} VARCHAR")


@migration
def m010_model_versions(cur: Any) -> None:
    # Versions (issue 16): a model is one row per version, keyed (schema_name, name, version); one version per model
    # is its default (what the bare name means). Every model so far becomes version v1 of itself, its default.
    # DuckDB cannot change a primary key in place, so the table is rebuilt with the same columns and rows.
    cols = cur.execute("SELECT column_name, data_type, is_nullable FROM duckdb_columns() "
                       f"WHERE schema_name = '{SCHEMA}' AND table_name = 'models' ORDER BY column_index").fetchall()
    defs = [f'"{c}" {t}{"" if nullable else " NOT NULL"}' for c, t, nullable in cols]
    names = ", ".join(f'"{c}"' for c, _, _ in cols)
    cur.execute(f"""CREATE TABLE {SCHEMA}.models_versioned ({", ".join(defs)}, version VARCHAR NOT NULL,
        is_default BOOLEAN NOT NULL, PRIMARY KEY (schema_name, name, version))""")
    cur.execute(f"INSERT INTO {SCHEMA}.models_versioned ({names}, version, is_default) "
                f"SELECT {names}, 'v1', true FROM {SCHEMA}.models")
    cur.execute(f"DROP TABLE {SCHEMA}.models")
    cur.execute(f"ALTER TABLE {SCHEMA}.models_versioned RENAME TO models")
    # The version a job creates (NULL in jobs created before this migration: v1).
    cur.execute(f"ALTER TABLE {SCHEMA}.jobs ADD COLUMN model_version VARCHAR")


@migration
def m011_usage_history(cur: Any) -> None:
    # Usage history (issue 16): COMPLETE, TRY_COMPLETE and EVALUATE counted per hour, function, model, version
    # ('' for a base model) and role. Training jobs' trained tokens are read from jobs.
    cur.execute(f"""CREATE TABLE {SCHEMA}.usage (
        start_ms BIGINT NOT NULL, function_name VARCHAR NOT NULL, model_name VARCHAR NOT NULL,
        version VARCHAR NOT NULL, role VARCHAR NOT NULL, calls BIGINT NOT NULL, rows BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL, errors BIGINT NOT NULL)""")


@migration
def m012_base_models(cur: Any) -> None:
    # Base models the administrator registered (issue 30): a name for a folder or hub id, granted with
    # GRANT USAGE ON BASE MODEL (grants.object_kind 'BASE MODEL').
    cur.execute(f"""CREATE TABLE {SCHEMA}.base_models (
        name VARCHAR PRIMARY KEY, source VARCHAR NOT NULL, owner VARCHAR, created_on BIGINT NOT NULL)""")


@migration
def m013_role_limits(cur: Any) -> None:
    # Per-role limits the administrator sets with ALTER ROLE r SET MAX_QUEUED_JOBS = 5, ... (issue 30).
    cur.execute(f"""CREATE TABLE {SCHEMA}.role_limits (
        role VARCHAR NOT NULL, name VARCHAR NOT NULL, value BIGINT NOT NULL, PRIMARY KEY (role, name))""")


@migration
def m014_evaluation_scores(cur: Any) -> None:
    # EVALUATE's built-in metrics: per-row scores in one column, scores MAP(VARCHAR, DOUBLE) (metric name -> score),
    # instead of a column per metric, so a new metric needs no migration. The scores stored so far move into it
    # (a NULL column, a metric the evaluation did not compute, is left out); the table is rebuilt without the
    # per-metric columns, as m010 rebuilds models. These are the columns m003 created, frozen here.
    metrics = ("exact_match", "normalized_match", "contains", "token_f1", "rouge_l", "bleu", "chrf", "json_valid",
               "sql_match", "completion_loss")
    entries = ", ".join(f"{{'key': '{m}', 'value': \"{m}\"}}" for m in metrics)
    cur.execute(f"""CREATE TABLE {SCHEMA}.evaluation_rows_scored (
        evaluation_id VARCHAR NOT NULL, model VARCHAR NOT NULL, idx BIGINT NOT NULL, id VARCHAR,
        prompt VARCHAR, completion VARCHAR, prediction VARCHAR, scores MAP(VARCHAR, DOUBLE),
        user_metrics VARCHAR, prompt_tokens BIGINT, completion_tokens BIGINT, latency_ms DOUBLE)""")
    cur.execute(f"""INSERT INTO {SCHEMA}.evaluation_rows_scored
        SELECT evaluation_id, model, idx, id, prompt, completion, prediction,
               map_from_entries(list_filter([{entries}], lambda e: e.value IS NOT NULL)),
               user_metrics, prompt_tokens, completion_tokens, latency_ms
        FROM {SCHEMA}.evaluation_rows""")
    cur.execute(f"DROP TABLE {SCHEMA}.evaluation_rows")
    cur.execute(f"ALTER TABLE {SCHEMA}.evaluation_rows_scored RENAME TO evaluation_rows")


@migration
def m015_users(cur: Any) -> None:
    # Users who log in (issue 32): a password's scrypt hash (NULL: no password), the DEFAULT_ROLE of CREATE USER;
    # and their programmatic access tokens, found by the public id their text carries, the secret only hashed.
    cur.execute(f"""CREATE TABLE {SCHEMA}.users (
        name VARCHAR PRIMARY KEY, password_hash VARCHAR, default_role VARCHAR, created_on BIGINT NOT NULL)""")
    cur.execute(f"""CREATE TABLE {SCHEMA}.user_tokens (
        id VARCHAR PRIMARY KEY, user_name VARCHAR NOT NULL, name VARCHAR NOT NULL, secret_hash VARCHAR NOT NULL,
        role_restriction VARCHAR, expires_at BIGINT NOT NULL, created_on BIGINT NOT NULL)""")


@migration
def m019_settings(cur: Any) -> None:
    # Database settings the administrator sets with duckdb-ft's SET statement (issue 34: the AISQL functions'
    # default model, duckdb_ft_default_model), one row per setting.
    cur.execute(f"""CREATE TABLE {SCHEMA}.settings (
        name VARCHAR PRIMARY KEY, value VARCHAR NOT NULL, set_by VARCHAR, set_on BIGINT NOT NULL)""")


@migration
def m016_preference_rows(cur: Any) -> None:
    # Preference tuning (issue 35): a dpo job's rows keep chosen in completion and their rejected answer here; a
    # kto job's rows their thumbs up/down in label (both NULL for sft). A step's method metrics (TRL's
    # rewards/chosen, rewards/margins, ...) beside its losses, and the latest of them on the job.
    cur.execute(f"ALTER TABLE {SCHEMA}.job_rows ADD COLUMN rejected VARCHAR")
    cur.execute(f"ALTER TABLE {SCHEMA}.job_rows ADD COLUMN label BOOLEAN")
    cur.execute(f"ALTER TABLE {SCHEMA}.metrics ADD COLUMN method_metrics MAP(VARCHAR, DOUBLE)")
    cur.execute(f"ALTER TABLE {SCHEMA}.jobs ADD COLUMN method_metrics VARCHAR")


def pending(cur: Any) -> list[str]:
    """The migrations not yet applied to a catalog that exists (none when there is no catalog at all)."""
    try:
        done = {r[0] for r in cur.execute(f"SELECT name FROM {SCHEMA}.migrations").fetchall()}
    except Exception:  # no catalog: nothing of duckdb-ft's is in this database
        return []
    return [m.__name__ for m in MIGRATIONS if m.__name__ not in done]


def migrate(cur: Any) -> list[str]:
    """Apply the migrations not yet recorded; return their names."""
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    cur.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.migrations (name VARCHAR PRIMARY KEY, applied_on BIGINT)")
    done = {r[0] for r in cur.execute(f"SELECT name FROM {SCHEMA}.migrations").fetchall()}
    applied = []
    for m in MIGRATIONS:
        if m.__name__ in done:
            continue
        with transaction(cur):
            m(cur)
            cur.execute(f"INSERT INTO {SCHEMA}.migrations VALUES (?, ?)", [m.__name__, now_ms()])
        applied.append(m.__name__)
    return applied
