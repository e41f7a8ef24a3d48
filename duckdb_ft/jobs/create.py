"""FINETUNE('CREATE'): every check up front and synchronously, then the job and its snapshot of rows in one
transaction. A CREATE that fails leaves nothing behind: no job, no rows, no name taken.

Checks, in order: the model name, the options, the base model (it exists and has a chat template), the queries
(one read-only query each), the schema, the privileges (CREATE MODEL on the schema, SELECT on everything the
queries read), and the columns (``prompt`` and ``completion``, text).
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb

from .. import catalog
from ..catalog import jobs as jobdb, models as modeldb, objects
from ..errors import AlreadyExists, FtError, Interrupted, InvalidArgument, NotFound
from ..governance.authorize import authorize_query
from ..governance.base_models import base_model_for, shown
from ..governance import quotas
from ..governance.limits import check_training_options
from ..governance.run_limits import check_row_epochs
from ..ml import data, devices, models
from ..options import TrainingOptions
from ..prep import clean as prep_clean, stage as prep_stage
from ..queries import check_query, check_version, parse_model_name
from . import lineage

if TYPE_CHECKING:
    from ..surface.engine import Session

@dataclass
class Request:
    """A checked CREATE (or ESTIMATE): the queries and options as they will run."""

    schema: str
    model_name: str | None
    base_model: str
    base_path: str
    train_q: str
    val_q: str | None
    opts: TrainingOptions
    parent: lineage.Parent | None = None
    """The fine-tuned model a continued job starts from (``base_model`` is then the parent's base model)."""
    version: str = "v1"
    """The model version the job creates (``v1`` of a new name unless the option ``version`` says otherwise)."""
    versioned: bool = False
    """The option ``version`` was given: the name may exist, and the job adds a version to it."""


def check_request(cur: Any, session: Session, name: str | None, base_model: str, training_query: str,
                  validation_query: str | None = None, options: str | None = None) -> Request:
    """CREATE's checks, in order, for CREATE and ESTIMATE alike; raises the first problem, changes nothing.

    ``name`` None (ESTIMATE) skips the model name and the CREATE MODEL privilege: nothing is created.
    """
    schema, model_name = parse_model_name(name, session.schema) if name is not None else (session.schema, None)
    version_opt, options = split_version_option(options)
    opts = TrainingOptions.parse(options)
    parent = lineage.find_parent(cur, session, base_model, options, opts)  # continue a fine-tuned model
    if opts.reference is not None:  # dpo/kto: start from that fine-tuned model, and keep it as the reference
        parent = lineage.reference_parent(cur, session, base_model, opts.reference, parent, options, opts)
    if parent is not None:
        base_model = parent.base_model
    else:  # built-in, registered (USAGE; the job records its folder or hub id), any for the administrator
        base_model = base_model_for(session, cur, base_model, models.BUILTIN)
    check_training_options(session, opts)  # several machines: the administrator's
    quotas.check_job(session, cur, opts, 1 if name is not None else 0)  # the role's limits (ALTER ROLE ... SET)
    devices.check_machine(opts)  # devices, FSDP, quantization against what this machine has
    label = shown(session, cur, base_model, models.BUILTIN)  # a user's errors name no folder or hub id
    try:
        path = check_base_model(base_model)
    except FtError as e:
        if label == base_model:
            raise
        raise type(e)(f"base model '{label}' cannot be loaded: the administrator who registered it can see why "
                      "(SHOW BASE MODELS)") from None
    check_fits_model(path, label, opts)
    train_q = check_query(training_query, "training query")
    val_q = check_query(validation_query, "validation query") if validation_query else None
    if not objects.schema_exists(cur, schema):
        raise NotFound(f"schema '{schema}' does not exist: CREATE SCHEMA {schema} first")
    check = session.checker()
    if name is not None:
        check.require("CREATE MODEL", "SCHEMA", schema)
    for q, what in ((train_q, "training query"), (val_q, "validation query")):
        if q:
            authorize_query(session, cur, q, what)  # on DuckDB's own parse and plan; no FINETUNE inside
    data.check_columns(cur, train_q, "training query", opts.method)
    if val_q:
        data.check_columns(cur, val_q, "validation query", opts.method)
    req = Request(schema, model_name, base_model, path, train_q, val_q, opts, parent)
    if name is not None and version_opt is not None:
        req.versioned = True
        if modeldb.model_exists(cur, schema, model_name):  # a new version changes what the name means for everyone
            check.require_owner("MODEL", f"{schema}.{model_name}", "adding a version")
        taken = modeldb.version_labels(cur, schema, model_name)
        req.version = modeldb.next_version(taken) if version_opt is True else version_opt
    return req


def split_version_option(options: str | None) -> tuple[str | bool | None, str | None]:
    """The option ``version`` (True: the next ``v<N>``; a label; None: not given) and the other options' JSON.

    ``version`` names the model's version, not how it trains, so it is no training option (and not in the
    options a job records)."""
    if options is None or not str(options).strip():
        return None, options
    try:
        raw = json.loads(options)
    except (json.JSONDecodeError, ValueError):
        return None, options  # TrainingOptions.parse says what is wrong
    if not isinstance(raw, dict) or "version" not in raw:
        return None, options
    value = raw.pop("version")
    if value is True:
        version: str | bool | None = True
    elif value is None or value is False:
        version = None
    elif isinstance(value, str):
        version = check_version(value)
    else:
        raise InvalidArgument(f"invalid FINETUNE option version {json.dumps(value)[:40]}: use true (the next version, "
                              "v2, v3, ...) or a version name such as \"v7\"")
    return version, json.dumps(raw)


def create_job(cur: Any, session: Session, name_lock: threading.Lock, name: str, base_model: str, training_query: str,
               validation_query: str | None = None, options: str | None = None,
               sweep_epochs: int | None = None) -> str:
    """Check everything, copy the data, record a PENDING job; return its id (the caller queues it).

    ``name_lock`` serializes the check that the model name is free with the insert that takes it. ``sweep_epochs``
    (a SWEEP's first job): the largest ``max_epochs`` of the sweep's jobs, which read this job's rows.
    """
    req = check_request(cur, session, name, base_model, training_query, validation_query, options)
    schema, model_name, train_q, val_q, opts = req.schema, req.model_name, req.train_q, req.val_q, req.opts
    job_id = f"ft_{uuid.uuid4()}"
    target_free(cur.cursor(), schema, model_name, req.version, req.versioned)  # fail fast, before copying anything
    # The copy runs the user's query once, on this cursor, which interrupt() and Ctrl-C of the session stop
    # (session.busy_cursor); the name lock is held only for the last check, the job's insert and the commit.
    session.busy_cursor = cur
    try:
        cur.execute("BEGIN TRANSACTION")
        try:
            jobdb.insert_job(cur, {
                "id": job_id, "schema_name": schema, "model_name": model_name, "base_model": req.base_model,
                "parent_model": req.parent and req.parent.name, "parent_job_id": req.parent and req.parent.job_id,
                "model_version": req.version, "training_query": train_q, "validation_query": val_q,
                "options": opts.to_json(),
                "owner": session.role, "status": "PENDING", "progress": 0.0, "created_on": catalog.now_ms(),
            })
            counts = _snapshot(cur, job_id, train_q, val_q, opts)
            quotas.check_rows(session, cur, job_id)  # MAX_TRAINING_ROWS: over it, the transaction rolls back
            check_row_epochs(session, cur, counts.get("train", 0), max(opts.max_epochs, sweep_epochs or 0))
            with name_lock:
                # a fresh cursor: what others committed meanwhile
                target_free(cur.cursor(), schema, model_name, req.version, req.versioned)
                cur.execute("COMMIT")
        except BaseException:
            try:
                cur.execute("ROLLBACK")
            except Exception:  # the failed statement already ended the transaction
                pass
            raise
    except FtError:
        raise
    except duckdb.InterruptException:
        raise Interrupted(f"finetune('CREATE', '{schema}.{model_name}', ...) was interrupted while copying the "
                          "training rows; nothing was created") from None
    except Exception as e:
        raise InvalidArgument(f"reading the training data failed: {str(e).splitlines()[0]}") from None
    finally:
        session.busy_cursor = None
    return job_id


def target_free(cur: Any, schema: str, model_name: str, version: str, versioned: bool) -> None:
    """The model a job creates must be new: an unversioned CREATE needs a free name, a versioned one a free
    version of the name (no model version, no active job creating it)."""
    if versioned:
        if version in modeldb.version_labels(cur, schema, model_name):
            raise AlreadyExists(f"model '{schema}.{model_name}' has a version '{version}' already (or a job is "
                                f"creating it): pass another version name, or {{\"version\": true}} for the next one")
        return
    holder = jobdb.name_in_use(cur, schema, model_name)
    if holder:
        what = "a model" if holder == "model" else f"job {holder} (which is creating it)"
        raise AlreadyExists(f"model name '{schema}.{model_name}' is taken by {what}: choose another name, "
                            f"DROP MODEL {schema}.{model_name}, or add a version to it with the option "
                            f"'{{\"version\": true}}'")


def _snapshot(cur: Any, job_id: str, train_q: str, val_q: str | None, opts: TrainingOptions) -> dict[str, int]:
    """Stage the rows, clean them as the options say (:mod:`duckdb_ft.prep`), store them in the catalog, and
    record their counts and the cleaning on the job; return the counts per split."""
    st = prep_stage.stage(cur, train_q, val_q, opts)
    try:
        prep_stage.check_preference_rows(cur, st, opts.method)
        cleaning = prep_clean.clean(cur, st, opts)
        counts = prep_stage.settle_splits(cur, st)
        if val_q and not counts.get("validation"):
            raise InvalidArgument("the validation query returned no row with both prompt and completion non-NULL: "
                                  "check its WHERE clause, or pass NULL to hold out some training rows instead")
        jobdb.store_staged_rows(cur, job_id, st.table)
        jobdb.update_job(cur, job_id, train_rows=counts.get("train", 0), validation_rows=counts.get("validation", 0),
                         validation_source=st.validation_source, skipped_rows=st.skipped(cur),
                         cleaning=json.dumps(cleaning))
        return counts
    finally:
        st.drop(cur)


def check_fits_model(path: str, base_model: str, opts: TrainingOptions) -> None:
    """Options the base model itself bounds: ``max_seq_length`` within its context, ``target_modules`` naming
    modules it has (read from its config and its safetensors headers, without loading it)."""
    import glob
    import os
    import struct

    context = models.context_length(path)
    if context is not None and opts.max_seq_length > context:
        raise InvalidArgument(f"max_seq_length {opts.max_seq_length} is beyond the context of base model "
                              f"'{base_model}' ({context} tokens): use at most {context}")
    if not opts.target_modules:
        return
    names: set[str] = set()
    for file in glob.glob(os.path.join(path, "*.safetensors")):
        try:
            with open(file, "rb") as f:
                size = struct.unpack("<Q", f.read(8))[0]
                names |= {k.rsplit(".", 1)[0] for k in json.loads(f.read(size)) if k != "__metadata__"}
        except (OSError, ValueError, struct.error):
            return  # the job's own loading will say what is wrong with the weights
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    missing = [m for m in opts.target_modules if m not in leaves and not any(n.endswith("." + m) for n in names)]
    if names and missing:
        raise InvalidArgument(f"target_modules {missing} name no module of base model '{base_model}'; it has "
                              f"e.g. {', '.join(sorted(leaves - {'weight', 'bias'})[:12])}")


def check_base_model(base_model: str) -> str:
    """The base model's resolved path; it must exist and have a chat template."""
    if not isinstance(base_model, str) or not base_model.strip():
        raise InvalidArgument("the base model is empty: pass one, e.g. 'smollm2-135m'")
    path = models.resolve(base_model)
    tokenizer = models.load_tokenizer(path)
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidArgument(f"base model '{base_model}' has no chat template: use an instruct/chat model")
    return path
