"""Rows as Hugging Face datasets, and back: a job's training snapshot (or a query's rows) as a ``datasets.Dataset``
over the same Arrow buffers (no copy), saved with ``save_to_disk``; and a folder ``datasets`` saved, read back as
Arrow for a table that FINETUNE can train on.

A snapshot keeps the catalog's rows and order (``split``, then position) with columns ``split``, ``prompt``,
``completion`` (and ``rejected``, ``label`` for a preference job), so :func:`digest` gives the model lineage's
``snapshot_hash`` back from the dataset itself, wherever the dataset went. Needs the ``datasets`` package (the
optional extra ``datasets``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..catalog import SCHEMA, jobs as jobdb, snapshots
from ..errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied

if TYPE_CHECKING:
    from pyarrow import Table

    from ..surface.engine import Session

JOB_ID = re.compile(r"ft_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
INSTALL = "pip install 'duckdb-ft[datasets]'"


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise InvalidArgument(f"Hugging Face datasets need the package datasets: {INSTALL}") from None
    return datasets


@contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars from datasets while it saves or loads (they would scribble over the shell's output)."""
    datasets = _datasets()
    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def snapshot(session: Session, cur: Any, job_id: str) -> tuple[Table, dict[str, Any]]:
    """A job's snapshot rows as an Arrow table (snapshot order) and its lineage (job, rows, hash). Needs
    OWNERSHIP of the job, as its other data does; one error for a job that does not exist and one not owned."""
    job = jobdb.get_job(cur, job_id)
    if job is None or not (session.is_admin or job["owner"] in session.checker().roles):
        if session.is_admin:
            raise NotFound(f"fine-tuning job '{job_id}' does not exist: finetune('SHOW') lists the jobs")
        raise PermissionDenied.of("OWNERSHIP", "JOB", job_id, session.role,
                                  reason="it does not exist or reading its rows needs OWNERSHIP",
                                  hint="finetune('SHOW') lists your jobs")
    preference = cur.execute(f"SELECT bool_or(rejected IS NOT NULL OR label IS NOT NULL) FROM {SCHEMA}.job_rows "
                             "WHERE job_id = ?", [job_id]).fetchall()[0][0]
    columns = snapshots.COLUMNS if preference else snapshots.COLUMNS[:3]
    table = cur.sql(f"SELECT {', '.join(columns)} FROM {SCHEMA}.job_rows WHERE job_id = ? ORDER BY split, idx",
                    params=[job_id]).to_arrow_table()
    rows, digest = snapshots.digest_batches(table.to_batches())
    return table, {"job_id": job_id, "model": f"{job['schema_name']}.{job['model_name']}", "snapshot_rows": rows, "snapshot_hash": digest}


def digest(dataset: Any) -> tuple[int, str]:
    """(rows, SHA-256) of a snapshot dataset, as the model lineage's ``snapshot_rows`` and ``snapshot_hash``."""
    return snapshots.digest_batches(_table(dataset).to_batches())


def from_arrow(table: Table, lineage: dict[str, Any]) -> Any:
    """``table`` as a ``datasets.Dataset`` over the same Arrow buffers; ``lineage`` as JSON in its description."""
    datasets = _datasets()
    from datasets.table import InMemoryTable

    info = datasets.DatasetInfo(description=json.dumps({"duckdb_ft": lineage}, default=str))
    return datasets.Dataset(InMemoryTable(table), info=info)


def save(dataset: Any, folder: str, lineage: dict[str, Any]) -> str:
    """``dataset.save_to_disk`` into ``folder`` (new, or an empty folder), with ``duckdb_ft.json`` (the lineage):
    written into a temporary folder beside it and renamed into place, so a failure leaves nothing."""
    target = Path(folder).expanduser().resolve()
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise AlreadyExists(f"{target} exists already and is not an empty folder: save into a new folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".dataset-", dir=target.parent))
    except OSError as e:
        raise InvalidArgument(f"cannot write in {target.parent}: {e.strerror or e}; choose a writable folder") \
            from None
    try:
        with _quiet():
            dataset.save_to_disk(str(tmp / "data"))
        for name in os.listdir(tmp / "data"):
            os.rename(tmp / "data" / name, tmp / name)
        os.rmdir(tmp / "data")
        (tmp / "duckdb_ft.json").write_text(json.dumps(lineage, indent=2, default=str))
        if target.exists():
            target.rmdir()
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(target)


def read_folder(folder: str) -> Table:
    """The rows of a folder ``datasets`` saved (``save_to_disk``) as one Arrow table, memory-mapped: a
    ``DatasetDict``'s splits one after another, with a ``split`` column naming each (unless they have one)."""
    import pyarrow as pa

    path = Path(folder).expanduser()
    if not ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise InvalidArgument(f"{folder} is not a folder saved by datasets' save_to_disk (no state.json or "
                              "dataset_dict.json): for parquet, json or csv files use read_parquet, read_json or "
                              "read_csv in SQL")
    with _quiet():
        loaded = _datasets().load_from_disk(str(path))
    if hasattr(loaded, "column_names") and isinstance(loaded.column_names, list):
        return _table(loaded)
    tables = []
    for split, part in loaded.items():
        table = _table(part)
        if "split" not in table.column_names:
            table = table.append_column("split", pa.array([split] * table.num_rows, pa.string()))
        tables.append(table)
    return pa.concat_tables(tables, promote_options="default")


def _table(dataset: Any) -> Table:
    return (dataset if dataset._indices is None else dataset.flatten_indices()).data.table
