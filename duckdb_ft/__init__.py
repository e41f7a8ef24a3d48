"""duckdb-ft: fine-tune language models from SQL, inside DuckDB.

    >>> import duckdb_ft
    >>> con = duckdb_ft.connect("shop.duckdb")
    >>> con.execute("SELECT complete('smollm2-135m', 'What is the capital of France?')").fetchall()

``connect()`` opens a database and installs the extension; ``install(con)`` installs it on a connection you
already have (a notebook's, a BI tool's).

The package, by room (imports flow down this list, never up):

- ``cli.py``: the ``duckdb-ft`` command and its subcommands; ``demo/``: ``duckdb-ft demo``.
- ``shell/``: the interactive shell and scripts, dot commands, output modes, job watching.
- ``surface/``: the SQL surface: UDF and macro registration, the statement router, the Connection wrapper.
- ``evaluation/``: ``finetune('EVALUATE')``: per-row metrics, paired comparison with significance, retention.
- ``jobs/``: fine-tuning jobs: CREATE's checks and snapshot, ESTIMATE, the queue and worker, the answers' shapes.
- ``prep/``: data preparation: the staged snapshot, duplicates and personal data found in SQL, cleaning at
  CREATE (dedupe, pii, drop_conflicting), ESTIMATE's report.
- ``governance/``: roles, grants, privilege checks, authorization of plain SQL.
- ``ml/``: base models, tokenizing and packing, training, kernels, generation, export: the only modules that
  import torch, transformers or peft (inside the functions that run models).
- ``catalog/``: the ``duckdb_ft`` schema: migrations, one repository per kind of object, one transaction helper.
- ``options.py``, ``queries.py``, ``errors.py``: options JSON, query and name checks, the error hierarchy.

``import duckdb_ft``, ``connect()`` and plain SQL load no torch; the first COMPLETE, FINETUNE or export does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import ml as _ml  # noqa: F401  imports no model library; asks torch for huge pages if it loads after us
from .errors import (
    AlreadyExists,
    AuthenticationFailed,
    FtError,
    Interrupted,
    InvalidArgument,
    JobError,
    ModelLoadError,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    QueueFull,
    RemoteError,
    RequestTimeout,
)

if TYPE_CHECKING:
    from .surface.connection import Connection

__version__ = "0.1.0"

__all__ = [
    "connect", "install", "execute", "export_model", "to_dataset", "export_dataset", "dataset_digest",
    "read_dataset", "wait", "FtError", "InvalidArgument", "NotFound", "ModelNotFound", "ModelLoadError",
    "AlreadyExists", "AuthenticationFailed", "PermissionDenied", "JobError", "Interrupted", "RemoteError",
    "QueueFull", "RequestTimeout", "__version__",
]


def install(con: Any, *, user: str | None = None, resume_jobs: bool = False) -> Any:
    """Register duckdb-ft's functions on an existing DuckDB connection and return the connection.

    Installing twice is harmless. ``user`` opens the connection's session as that user (None: administrator).
    ``resume_jobs``: resume at once the jobs that stopped unfinished, a dead process's included (default: they are
    marked ERROR and ``finetune('RESUME', id)`` resumes one).
    """
    from .surface.functions import install as _install

    _install(con, user=user, resume_jobs=resume_jobs)
    return con


def connect(path: str | None = None, *, user: str | None = None, read_only: bool = False,
            config: dict | None = None, resume_jobs: bool = False) -> Connection:
    """Open a DuckDB database (in memory when ``path`` is None) with duckdb-ft installed.

    Returns a :class:`duckdb_ft.connection.Connection`: DuckDB's connection API, whose ``sql()``/``execute()``
    also run duckdb-ft's statements (GRANT, CREATE ROLE, SHOW MODELS, ...). ``user`` opens a session as that
    user, locked down to what the user's roles are granted; None is the administrator.
    """
    import duckdb

    from .surface.connection import Connection
    from .surface.functions import install as _install

    con = duckdb.connect(path or ":memory:", read_only=read_only, config=config or {})
    if "enable_progress_bar" not in (config or {}) and con.execute(
            "SELECT current_setting('enable_progress_bar')").fetchall()[0][0]:
        # DuckDB draws a bar on stdout for queries over 2 s (a CREATE copying rows, a COMPLETE over a table):
        # it would corrupt a script's output. The shell and notebooks show their own progress. (In Jupyter
        # without ipywidgets the bar is already off, and DuckDB refuses any SET of it: hence the check.)
        try:
            con.execute("SET enable_progress_bar = false")
        except duckdb.Error:  # in Jupyter DuckDB refuses to touch the setting without ipywidgets: leave it
            pass
    session = _install(con, user=user, resume_jobs=resume_jobs)
    return Connection(con, session, root=True)


def execute(con: Any, sql: str, params: Any = None) -> Any:
    """Run one statement, duckdb-ft's own (GRANT, SHOW MODELS, ...) included; a relation, or None.

    Use this (or the ``duckdb-ft`` shell) rather than ``con.sql`` for statements DuckDB itself cannot parse.
    """
    from .surface.connection import execute as _execute

    return _execute(con, sql, params)


def export_model(con: Any, name: str, folder: str | None = None, format: str = "adapter", dtype: str = "f32",
                 push_to_hub: str | None = None, private: bool = True) -> str:
    """Write fine-tuned model ``name`` at ``folder`` (new, or an empty folder); return its path. ``format``:

    - ``adapter``: a PEFT adapter folder (adapter weights, config, tokenizer): ``PeftModel.from_pretrained``;
    - ``merged``: the adapter merged into the base weights, a plain Hugging Face folder (safetensors, config,
      tokenizer with its chat template, generation config): ``AutoModelForCausalLM.from_pretrained(folder)``;
    - ``gguf``: the merged weights as one GGUF file with the tokenizer and chat template (``folder/model.gguf``,
      or ``folder`` itself when it ends in ``.gguf``), for llama.cpp-based tools.

    ``dtype`` (``f32``, ``f16``) is the weights' type of ``merged`` and ``gguf``. Needs OWNERSHIP of the model.
    ``name@version`` exports that version (else the default one). A base model (``smollm2-135m``, or a registered
    one the session has USAGE on) exports as ``merged`` or ``gguf``: what an adapter needs beside it.

    ``push_to_hub`` (a repository id, ``user/name``) also uploads the exported folder to the Hugging Face Hub
    with huggingface_hub (token from ``HF_TOKEN``; the repository is created, ``private`` unless told
    otherwise); ``folder`` may then be None (a temporary folder, removed after the upload). Returns the
    repository's URL when pushing. Offline, or with the hub unreachable, it is a :class:`RemoteError` raised
    before anything is written: export to a folder instead and upload that where you are online.
    """
    from .ml.export import export_model as _export
    from .surface.engine import session_of

    session = con.session if hasattr(con, "session") else session_of(con)
    return _export(session, name, folder, format=format, dtype=dtype, push_to_hub=push_to_hub, private=private)


def to_dataset(con: Any, source: str) -> Any:
    """A ``datasets.Dataset`` (Hugging Face) over the same Arrow buffers as the rows, for other trainers (TRL,
    Unsloth, a GPU cluster). ``source``:

    - a job id (``ft_...``): the job's training snapshot, both splits, in the catalog's order, columns ``split``,
      ``prompt``, ``completion`` (``rejected``, ``label`` for preference jobs); needs OWNERSHIP of the job. Its
      ``info.description`` holds the lineage (job, model, ``snapshot_rows``, ``snapshot_hash``), and
      :func:`dataset_digest` recomputes them from the rows: they equal the model's lineage;
    - a query (one SELECT, run as the connection's session, under its privileges): its rows.

    Needs the package ``datasets`` (``pip install 'duckdb-ft[datasets]'``).
    """
    from .ml import hf_dataset

    table, lineage = _dataset_rows(con, source)
    return hf_dataset.from_arrow(table, lineage)


def export_dataset(con: Any, source: str, folder: str | None = None, push_to_hub: str | None = None,
                   private: bool = True) -> str:
    """:func:`to_dataset` saved with ``save_to_disk`` into ``folder`` (new, or an empty folder), with
    ``duckdb_ft.json`` (the lineage) beside its files; ``datasets.load_from_disk(folder)`` reads it. Returns the
    folder's path. ``duckdb-ft export DATABASE JOB_ID_OR_QUERY FOLDER --format dataset`` is the same.

    ``push_to_hub`` (``user/name``) also uploads the folder to a Hugging Face Hub dataset repository, behind the
    checks of a model's push (:func:`export_model`), all made before anything is written; ``folder`` may then be
    None (a temporary folder, removed after the upload). Returns the repository's URL when pushing."""
    import shutil
    import tempfile

    from .ml import hf_dataset

    if folder is None and push_to_hub is None:
        raise InvalidArgument("export_dataset needs a folder to write (or push_to_hub, a hub repository id)")
    table, lineage = _dataset_rows(con, source)
    target = None
    if push_to_hub is not None:
        from .ml import hub

        target = hub.prepare(push_to_hub, private, repo_type="dataset")
    scratch = tempfile.mkdtemp(prefix="duckdb-ft-push-") if folder is None else None
    try:
        path = hf_dataset.save(hf_dataset.from_arrow(table, lineage), folder or f"{scratch}/dataset", lineage)
        if target is None:
            return path
        what = f"job {lineage['job_id']}" if "job_id" in lineage else "a query's rows"
        return hub.upload(target, path, f"duckdb-ft dataset export of {what}")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def dataset_digest(dataset: Any) -> tuple[int, str]:
    """(rows, SHA-256) of a snapshot dataset from :func:`to_dataset`, as a model's lineage records them
    (``snapshot_rows``, ``snapshot_hash``)."""
    from .ml import hf_dataset

    return hf_dataset.digest(dataset)


def read_dataset(con: Any, folder: str, table: str) -> int:
    """Create table ``table`` from a folder that ``datasets`` saved (``save_to_disk``; a ``DatasetDict``'s splits
    get a ``split`` column), for FINETUNE to train on; returns its row count. The administrator only (it reads a
    folder of this machine). Parquet, JSON lines or CSV files (what ``load_dataset`` also reads) need no
    duckdb-ft: ``read_parquet('folder/*.parquet')``, ``read_json``, ``read_csv`` in SQL."""
    from .ml import hf_dataset
    from .queries import parse_model_name
    from .surface.engine import session_of

    session = con.session if hasattr(con, "session") else session_of(con)
    if not session.is_admin:
        raise PermissionDenied.of(PermissionDenied.ADMINISTRATOR, "FOLDER", folder, session.role,
                                  reason="reading a folder of this machine is for the administrator")
    schema, name = parse_model_name(table)
    rows = hf_dataset.read_folder(folder)
    raw = con.duckdb_connection if hasattr(con, "duckdb_connection") else con
    view = "__duckdb_ft_dataset"
    raw.register(view, rows)
    try:
        raw.execute(f'CREATE TABLE "{schema}"."{name}" AS SELECT * FROM {view}')
    finally:
        raw.unregister(view)
    return rows.num_rows


def _dataset_rows(con: Any, source: str) -> tuple[Any, dict[str, Any]]:
    from .ml import hf_dataset
    from .queries import check_query
    from .surface.engine import session_of

    session = con.session if hasattr(con, "session") else session_of(con)
    if isinstance(source, str) and hf_dataset.JOB_ID.fullmatch(source.strip()):
        return hf_dataset.snapshot(session, session.engine.cursor(), source.strip())
    query = check_query(source, "dataset query")
    return execute(con, query).to_arrow_table(), {"query": query}


def wait(con: Any, job_id: str, timeout: float | None = None) -> str:
    """Block until a fine-tuning job has finished (or ``timeout`` seconds passed); return its status.

    The SQL form is ``SELECT finetune('WAIT', job_id [, timeout_seconds])``.
    """
    from .surface.engine import engine_of

    return engine_of(con).jobs.wait(job_id, timeout)
