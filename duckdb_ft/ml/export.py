"""Export a fine-tuned model for use outside duckdb-ft, in one of three formats.

- ``adapter``: a PEFT adapter folder: ``adapter_model.safetensors`` and ``adapter_config.json`` (with
  ``base_model_name_or_path``), as ``PeftModel.save_pretrained`` writes them, so
  ``PeftModel.from_pretrained(base_model, folder)`` loads it, and the base model's tokenizer beside it.
- ``merged``: the LoRA update merged into the base weights (peft ``merge_and_unload``): a plain Hugging Face
  folder (safetensors weights, config, tokenizer with its chat template, generation config that stops where
  COMPLETE stops) that ``AutoModelForCausalLM.from_pretrained(folder)`` loads without peft or duckdb-ft.
- ``gguf``: the merged weights as one GGUF file (``gguf_file.py``), f32 or f16, with the tokenizer and chat
  template in its metadata, for llama.cpp-based tools.

Every format is written into a temporary folder beside the target and renamed into place: a failed export leaves
nothing. Each export also holds ``duckdb_ft.json``: the model's name, version, job and lineage. ``push_to_hub``
uploads the exported folder to the Hugging Face Hub (``hub.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..catalog import models as modeldb
from ..errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, RemoteError
from ..queries import parse_model_ref
from . import complete, models

if TYPE_CHECKING:
    from ..surface.engine import Session

FORMATS = ("adapter", "merged", "gguf")
DTYPES = ("f32", "f16")


def export_model(session: Session, name: str, folder: str | None, format: str = "adapter", dtype: str = "f32",
                 push_to_hub: str | None = None, private: bool = True) -> str:
    """Write model ``name`` (``name@version``: that version; else the default) at ``folder`` (which must not
    exist, or be an empty folder) in ``format``; its path.

    ``dtype`` (``f32`` or ``f16``) is the weights' type of ``merged`` and ``gguf``; f32 answers exactly as
    COMPLETE does. For ``gguf``, a ``folder`` ending in ``.gguf`` is the file itself; otherwise the folder holds
    ``model.gguf``. Needs OWNERSHIP of the model: exporting hands its weights out of the database's governance.
    ``push_to_hub`` (``user/name``) also uploads the exported folder to the Hugging Face Hub (``hub.py``; every
    check, the hub's reachability included, comes before anything is written); ``folder`` None then exports into
    a temporary folder removed after the upload. Returns the repository's URL when pushing.
    """
    if format not in FORMATS:
        raise InvalidArgument(f"unknown export format '{format}': use one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise InvalidArgument(f"unknown export dtype '{dtype}': use one of {', '.join(DTYPES)}")
    if format == "adapter" and dtype != "f32":
        raise InvalidArgument("the adapter format keeps the trained adapter's own weights: drop dtype, or export "
                              "--format merged or gguf")
    if folder is None and push_to_hub is None:
        raise InvalidArgument("export needs a folder to write (or push_to_hub, a hub repository id)")
    schema, model, version = parse_model_ref(name, session.schema)
    cur = session.engine.cursor()
    if not modeldb.model_exists(cur, schema, model) or not session.checker().owns("MODEL", f"{schema}.{model}"):
        if session.is_admin:
            raise NotFound(f"model '{schema}.{model}' does not exist (SHOW MODELS lists them)")
        raise PermissionDenied.of(  # one error: a user cannot tell the two apart
            "OWNERSHIP", "MODEL", f"{schema}.{model}", session.role,
            reason="it does not exist or OWNERSHIP is required", hint="SHOW MODELS lists the models you may use")
    session.engine.check_current()
    row = modeldb.get_model(cur, schema, model, version)
    if row is None:
        raise NotFound(f"model '{schema}.{model}' has no version '{version}': SHOW VERSIONS IN MODEL "
                       f"{schema}.{model} lists them")
    if folder is not None:
        target = Path(folder).expanduser().resolve()
        if target.exists() and not (target.is_dir() and not any(target.iterdir())):
            raise AlreadyExists(f"{target} exists already and is not an empty folder: export into a new folder")
        if push_to_hub and format == "gguf" and target.suffix == ".gguf":
            raise InvalidArgument("push_to_hub uploads a folder: give a folder (or none) rather than a .gguf path")
    hub_target = None
    if push_to_hub is not None:
        from . import hub

        hub_target = hub.prepare(push_to_hub, private)
    scratch = Path(tempfile.mkdtemp(prefix="duckdb-ft-push-")) if folder is None else None
    try:
        if scratch is not None:
            target = scratch / "export"
        _write(cur, row, schema, model, target, format, dtype)
        if hub_target is None:
            return str(target)
        try:
            return hub.upload(hub_target, str(target), f"duckdb-ft export of {schema}.{model}@{row['version']} "
                                                       f"({format}, job {row['job_id']})")
        except RemoteError as e:
            if scratch is None:  # the folder asked for is whole: say so
                raise RemoteError(f"{e} The export itself is complete at {target}.") from None
            raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _write(cur: Any, row: dict[str, Any], schema: str, model: str, target: Path, format: str, dtype: str) -> None:
    """Write the export into a temporary folder beside ``target``, then rename it into place."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    except OSError as e:
        raise InvalidArgument(f"cannot write in {target.parent}: {e.strerror or e}; choose a writable folder") \
            from None
    single_file = format == "gguf" and target.suffix == ".gguf"
    try:
        if format == "adapter":
            _write_adapter(row, tmp)
        else:
            merged, tokenizer = merged_model(row)
            if format == "merged":
                _write_merged(merged, tokenizer, tmp, dtype)
            else:
                from .gguf_file import write_gguf

                write_gguf(merged, tokenizer, tmp / "model.gguf", dtype, f"{schema}.{model}")
        if not single_file:
            (tmp / "duckdb_ft.json").write_text(json.dumps(_info(cur, row, schema, model, format, dtype), indent=2,
                                                           default=str))
        if target.exists():
            target.rmdir()  # the empty folder the checks allowed: replaced by the finished one
        os.rename(tmp / "model.gguf" if single_file else tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if single_file:
        shutil.rmtree(tmp, ignore_errors=True)


def _info(cur: Any, row: dict[str, Any], schema: str, model: str, format: str, dtype: str) -> dict[str, Any]:
    info = {"model": f"{schema}.{model}", "version": row.get("version"), "format": format, "base_model": row["base_model"],
            "job_id": row["job_id"], "created_on": row["created_on"], "training_loss": row["training_loss"],
            "validation_loss": row["validation_loss"]}
    if format != "adapter":
        info["dtype"] = dtype
    for key in ("parent_model", "base_weights_hash", "snapshot_rows", "snapshot_hash", "options"):
        if row.get(key) is not None:
            info[key] = row[key]
    return info


def _write_adapter(row: dict[str, Any], tmp: Path) -> None:
    base_path = models.resolve(row["base_model"])
    config = models.lora_config_from_dict(json.loads(row["lora_config"]))
    config.base_model_name_or_path = base_path
    config.inference_mode = True
    config.save_pretrained(str(tmp))
    # peft names adapter weights without the adapter name: what get_peft_model_state_dict returned at training
    (tmp / "adapter_model.safetensors").write_bytes(bytes(row["adapter"]))
    models.load_tokenizer(base_path).save_pretrained(str(tmp))


def merged_model(row: dict[str, Any]) -> tuple[Any, Any]:
    """A fresh fp32 copy of the base model with the row's adapter merged in (not the shared cached module), and
    the tokenizer COMPLETE uses."""
    import torch
    from peft import PeftModel, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    base_path = models.resolve(row["base_model"])
    models._quiet()
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    peft = PeftModel(base, models.lora_config_from_dict(json.loads(row["lora_config"])))
    set_peft_model_state_dict(peft, models.adapter_from_bytes(row["adapter"]))
    merged = peft.merge_and_unload()
    merged.eval()
    return merged, models.load_tokenizer(base_path)


def _write_merged(model: Any, tokenizer: Any, tmp: Path, dtype: str) -> None:
    import torch

    gen = model.generation_config
    gen.eos_token_id = complete.stop_ids(model, tokenizer)  # where COMPLETE stops
    gen.pad_token_id = tokenizer.pad_token_id
    if dtype == "f16":
        model = model.to(torch.float16)
    model.save_pretrained(str(tmp))  # safetensors, config.json, generation_config.json
    tokenizer.save_pretrained(str(tmp))
