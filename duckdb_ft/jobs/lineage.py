"""Continue training and lineage (issue 16).

- :func:`find_parent`: at CREATE, a base model that names a fine-tuned model of the catalog makes the job a
  continuation: it trains the parent's base weights from the parent's adapter, so the LoRA shape (rank, alpha,
  target modules) is the parent's, and options that would change it are an error. Needs USAGE on the parent.
  ``bot`` continues the default version of ``bot``, ``bot@v1`` that version; the parent is recorded as
  ``schema.name@version``.
- :func:`model_lineage`: at the end of a job, what the model records of where it came from: its parent, its base
  model's weights hash, the queries, the snapshot's row count and hash, the options, the final metrics and the
  adapter's hash. Two trainings on the same snapshot with the same options show the same ``snapshot_hash`` and
  ``options``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..catalog import models as modeldb, snapshots
from ..errors import InvalidArgument, NotFound, PermissionDenied
from ..governance.base_models import shown
from ..ml.models import BUILTIN
from ..options import TrainingOptions
from ..queries import model_ref, parse_model_ref

if TYPE_CHECKING:
    from ..surface.engine import Session

#: Options that set the LoRA shape, with the LoRA config key each one is.
SHAPE = {"lora_r": "r", "lora_alpha": "lora_alpha", "target_modules": "target_modules"}


@dataclass
class Parent:
    """The fine-tuned model a continued job starts from."""

    name: str
    job_id: str
    base_model: str


def find_parent(cur: Any, session: Session, base_model: str, options: str | None,
                opts: TrainingOptions) -> Parent | None:
    """The parent model if ``base_model`` names a fine-tuned model (None: a base model); sets ``opts``'s LoRA shape
    to the parent's. Raises if the role may not use it or the options change its shape."""
    if not isinstance(base_model, str) or not base_model.strip():
        return None
    try:
        schema, name, version = parse_model_ref(base_model.strip(), session.schema)
    except InvalidArgument:
        return None  # a path or a hub id, not a model name
    row = modeldb.list_models_named(cur, schema, name, version)
    full = f"{schema}.{name}"
    if row is None and version is not None and session.checker().has("USAGE", "MODEL", full):
        if modeldb.model_exists(cur, schema, name):
            raise NotFound(f"model '{full}' has no version '{version}': SHOW VERSIONS IN MODEL {full} lists them")
        raise NotFound(f"model '{full}' does not exist (SHOW MODELS lists them)")
    if row is None and version is None:
        return None
    if row is None or not session.checker().has("USAGE", "MODEL", full):
        raise PermissionDenied.of("USAGE", "MODEL", full, session.role,
                                  reason="it does not exist or USAGE is required to continue training it")
    lora = json.loads(row["lora_config"])
    given = json.loads(options) if options else {}
    changed = []
    for option, key in SHAPE.items():
        theirs = lora.get(key)
        if option in given and given[option] is not None:
            mine = given[option]
            same = sorted(mine) == sorted(theirs or []) if option == "target_modules" else mine == theirs
            if not same:
                changed.append(f"{option} {json.dumps(mine)} (the parent's: {json.dumps(theirs)})")
        setattr(opts, option, sorted(theirs) if option == "target_modules" else theirs)
    if changed:
        raise InvalidArgument(f"continuing model '{full}' keeps its LoRA shape, but the options change it: "
                              f"{'; '.join(changed)}. Drop those options, or train a new adapter from its base "
                              f"model '{shown(session, cur, row['base_model'], BUILTIN)}'")
    return Parent(model_ref(schema, name, row["version"]), row["job_id"], row["base_model"])


def reference_parent(cur: Any, session: Session, base_model: str, reference: str, parent: Parent | None,
                     options: str | None, opts: TrainingOptions) -> Parent:
    """The option ``reference`` of a dpo or kto job: a fine-tuned model the job starts from (as a continuation)
    and keeps as its reference policy. It must be that model (or a fine-tune of the base model given)."""
    found = find_parent(cur, session, reference, options, opts)
    if found is None:
        raise NotFound(f"reference '{reference}' is no fine-tuned model (SHOW MODELS lists them): leave reference out "
                       "to use the base model as the reference")
    if parent is not None and parent.name != found.name:
        raise InvalidArgument(f"this job continues '{parent.name}' but its reference is '{found.name}': a job starts "
                              "from its reference, so give one of them only")
    given = base_model.strip() if isinstance(base_model, str) else base_model
    if parent is None and given not in (found.base_model, shown(session, cur, found.base_model, BUILTIN)):
        raise InvalidArgument(f"reference '{found.name}' is a fine-tune of base model "
                              f"'{shown(session, cur, found.base_model, BUILTIN)}', not of '{given}': pass that base "
                              "model")
    return found


def initial_adapter(cur: Any, job: dict[str, Any]) -> bytes | None:
    """The parent's adapter bytes a continued job starts from (None: not a continuation)."""
    if not job.get("parent_job_id"):
        return None
    found = modeldb.parent_adapter(cur, job["parent_job_id"])
    if found is None:
        raise InvalidArgument(f"parent model '{job['parent_model']}' was dropped before this job started: "
                              "train from its base model (this job's base_model) instead")
    return found[0]


#: Weight digests computed, by folder and its files' sizes and times, the oldest dropped past ``MAX_HASHES`` (a
#: process names few base models; a folder rewritten in place gets a new key, its old digest goes in time).
MAX_HASHES = 32
_hashes: dict[tuple, str] = {}
_hash_lock = threading.Lock()


def weights_hash(path: str) -> str | None:
    """SHA-256 over a model folder's weight files (names and bytes, sorted), cached per file size and mtime."""
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")) or glob.glob(os.path.join(path, "*.bin")))
    if not files:
        return None
    key = tuple((os.path.basename(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
    with _hash_lock:
        if (path, key) in _hashes:
            return _hashes[(path, key)]
        h = hashlib.sha256()
        for f in files:
            h.update(os.path.basename(f).encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        _hashes[(path, key)] = digest = h.hexdigest()
        while len(_hashes) > MAX_HASHES:
            del _hashes[next(iter(_hashes))]
        return digest


def model_lineage(cur: Any, job: dict[str, Any], rows_of: str, path: str, adapter: bytes,
                  metrics: dict[str, Any]) -> dict[str, Any]:
    """The lineage columns of the model a job stores."""
    rows, digest = snapshots.snapshot_digest(cur, rows_of)
    return {"parent_model": job.get("parent_model"), "parent_job_id": job.get("parent_job_id"),
            "base_weights_hash": weights_hash(path), "training_query": job["training_query"],
            "validation_query": job["validation_query"], "snapshot_rows": rows, "snapshot_hash": digest,
            "options": job["options"], "metrics": json.dumps(metrics),
            "adapter_hash": hashlib.sha256(adapter).hexdigest()}
