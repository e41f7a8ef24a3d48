"""FINETUNE('CREATE'): every check up front and synchronously, then the job and its snapshot of rows in one
transaction. A CREATE that fails leaves nothing behind: no job, no rows, no name taken.

Checks, in order: the model name, the options, the base model (it exists and has a chat template), the queries
(one read-only query each), the schema, the privileges (CREATE MODEL on the schema, SELECT on everything the
queries read), and the columns (``prompt`` and ``completion``, text).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from .. import catalog
from ..catalog import jobs as jobdb, objects
from ..errors import AlreadyExists, FtError, InvalidArgument, NotFound
from ..governance.authorize import authorize_query
from ..ml import data, models
from ..options import TrainingOptions
from ..queries import check_query, parse_model_name

MIN_ROWS_FOR_SPLIT = 10  # fewer rows than this and no validation query: validate on the training rows


def create_job(cur: Any, session: Any, name_lock: threading.Lock, name: str, base_model: str, training_query: str,
               validation_query: str | None = None, options: str | None = None) -> str:
    """Check everything, copy the data, record a PENDING job; return its id (the caller queues it).

    ``name_lock`` serializes the check that the model name is free with the insert that takes it.
    """
    schema, model_name = parse_model_name(name, session.schema)
    opts = TrainingOptions.parse(options)
    check_base_model(base_model)
    train_q = check_query(training_query, "training query")
    val_q = check_query(validation_query, "validation query") if validation_query else None
    if not objects.schema_exists(cur, schema):
        raise NotFound(f"schema '{schema}' does not exist: CREATE SCHEMA {schema} first")
    check = session.checker()
    check.require("CREATE MODEL", "SCHEMA", schema)
    for q, what in ((train_q, "training query"), (val_q, "validation query")):
        if q:
            authorize_query(session, cur, q, what)  # on DuckDB's own parse and plan; no FINETUNE inside
    data.check_columns(cur, train_q, "training query")
    if val_q:
        data.check_columns(cur, val_q, "validation query")
    job_id = f"ft_{uuid.uuid4()}"
    with name_lock:
        holder = jobdb.name_in_use(cur, schema, model_name)
        if holder:
            what = "a model" if holder == "model" else f"job {holder}, which is creating it,"
            raise AlreadyExists(f"model name '{schema}.{model_name}' is taken by {what}: choose another name "
                                f"or DROP MODEL {schema}.{model_name}")
        try:
            with catalog.transaction(cur):
                jobdb.insert_job(cur, {
                    "id": job_id, "schema_name": schema, "model_name": model_name, "base_model": base_model,
                    "training_query": train_q, "validation_query": val_q, "options": opts.to_json(),
                    "owner": session.role, "status": "PENDING", "progress": 0.0, "created_on": catalog.now_ms(),
                })
                _snapshot(cur, job_id, train_q, val_q, opts)
        except FtError:
            raise
        except Exception as e:
            raise InvalidArgument(f"reading the training data failed: {str(e).splitlines()[0]}") from None
    return job_id


def _snapshot(cur: Any, job_id: str, train_q: str, val_q: str | None, opts: TrainingOptions) -> None:
    """Copy the rows the job trains and validates on into the catalog, and record their counts on the job."""
    holdout = 0 if val_q else int(round(opts.validation_fraction * 100))
    skipped = jobdb.snapshot_rows(cur, job_id, train_q, "train", holdout)["skipped"]
    if val_q:
        skipped += jobdb.snapshot_rows(cur, job_id, val_q, "validation")["skipped"]
    counts = jobdb.count_rows(cur, job_id)
    source = "validation query" if val_q else "held-out training rows"
    if not val_q and (sum(counts.values()) < MIN_ROWS_FOR_SPLIT or not counts.get("validation")
                      or not counts.get("train")):
        jobdb.move_all_rows(cur, job_id, "validation", "train")
        counts = jobdb.count_rows(cur, job_id)
        source = "training rows (too few rows to hold some out)"
    if not counts.get("train"):
        raise InvalidArgument(
            f"the training query returned no row with both prompt and completion non-NULL "
            f"({skipped} rows skipped): check its WHERE clause and the NULLs in your columns")
    jobdb.update_job(cur, job_id, train_rows=counts.get("train", 0), validation_rows=counts.get("validation", 0),
                     validation_source=source, skipped_rows=skipped)


def check_base_model(base_model: str) -> str:
    """The base model's resolved path; it must exist and have a chat template."""
    if not isinstance(base_model, str) or not base_model.strip():
        raise InvalidArgument("the base model is empty: pass one, e.g. 'smollm2-135m'")
    path = models.resolve(base_model)
    tokenizer = models.load_tokenizer(path)
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidArgument(f"base model '{base_model}' has no chat template: use an instruct/chat model")
    return path
