"""Export a fine-tuned model, or a base model, for use outside duckdb-ft, in one of four formats.

- ``adapter``: a PEFT adapter folder: ``adapter_model.safetensors`` and ``adapter_config.json`` (with
  ``base_model_name_or_path``), as ``PeftModel.save_pretrained`` writes them, so
  ``PeftModel.from_pretrained(base_model, folder)`` loads it, and the base model's tokenizer beside it.
- ``merged``: the LoRA update merged into the base weights (peft ``merge_and_unload``): a plain Hugging Face
  folder (safetensors weights, config, tokenizer with its chat template, generation config that stops where
  COMPLETE stops) that ``AutoModelForCausalLM.from_pretrained(folder)`` loads without peft or duckdb-ft.
- ``gguf``: the merged weights as one GGUF file (``gguf_file.py``), f32 or f16, with the tokenizer and chat
  template in its metadata, for llama.cpp-based tools.
- ``gguf-lora``: the LoRA adapter alone as a GGUF adapter file (``gguf_lora.py``), for ``llama-server --lora`` and
  Ollama's ``ADAPTER``, over the base model's GGUF (export the base model ``--format gguf``).

Beside every GGUF export an Ollama ``Modelfile`` (``modelfile.py``): in the folder, or ``NAME.Modelfile`` beside a
``NAME.gguf`` file.

A base model (``smollm2-135m``, a registered one, any folder for the administrator) exports as ``merged`` or
``gguf`` (it has no adapter): the file an adapter export needs beside it in llama.cpp and Ollama.

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
from ..errors import AlreadyExists, InvalidArgument, ModelNotFound, NotFound, PermissionDenied, RemoteError
from ..queries import parse_model_ref
from . import complete, modelfile, models

if TYPE_CHECKING:
    from ..surface.engine import Session

FORMATS = ("adapter", "merged", "gguf", "gguf-lora")
#: The formats written as one GGUF file (``model.gguf``, ``adapter.gguf`` in a folder), and the file's name.
GGUF_FILES = {"gguf": "model.gguf", "gguf-lora": "adapter.gguf"}
#: The formats of a base model (it has no adapter).
BASE_FORMATS = ("merged", "gguf")
DTYPES = ("f32", "f16")


def export_model(session: Session, name: str, folder: str | None, format: str = "adapter", dtype: str = "f32",
                 push_to_hub: str | None = None, private: bool = True) -> str:
    """Write model ``name`` (``name@version``: that version; else the default) at ``folder`` (which must not
    exist, or be an empty folder) in ``format``; its path. A name that is no model of the catalog is a base model
    (``merged`` or ``gguf``), which a session may export where it may name it (built-in; registered, with USAGE).

    ``dtype`` (``f32`` or ``f16``) is the weights' type of ``merged``, ``gguf`` and ``gguf-lora``; f32 answers
    exactly as COMPLETE does. For ``gguf`` and ``gguf-lora``, a ``folder`` ending in ``.gguf`` is the file itself
    (its Modelfile beside it, ``NAME.Modelfile``); otherwise the folder holds ``model.gguf`` (``adapter.gguf``)
    and ``Modelfile``. Needs OWNERSHIP of the model: exporting hands its weights out of the database's governance.
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
                              "--format merged, gguf or gguf-lora")
    if folder is None and push_to_hub is None:
        raise InvalidArgument("export needs a folder to write (or push_to_hub, a hub repository id)")
    cur = session.engine.cursor()
    row = _fine_tuned(session, cur, name)
    if row is None:  # a base model: built-in, registered (USAGE), or any folder or hub id for the administrator
        row = _base_row(session, cur, name)
        if format not in BASE_FORMATS:
            raise InvalidArgument(f"'{name}' is a base model, which has no adapter: export it --format "
                                  f"{' or '.join(BASE_FORMATS)}")
    label = row["label"]
    if folder is not None:
        target = Path(folder).expanduser().resolve()
        if target.exists() and not (target.is_dir() and not any(target.iterdir())):
            raise AlreadyExists(f"{target} exists already" + (" and is not an empty folder" if target.is_dir() else "")
                                + ": export into a new folder (or a new .gguf path)")
        if format in GGUF_FILES and target.suffix == ".gguf":
            if push_to_hub:
                raise InvalidArgument("push_to_hub uploads a folder: give a folder (or none) rather than a .gguf path")
            if _beside(target).exists():
                raise AlreadyExists(f"{_beside(target)} exists already: the export writes its Modelfile there; move "
                                    "it, or export into a new folder")
    hub_target = None
    if push_to_hub is not None:
        from . import hub

        hub_target = hub.prepare(push_to_hub, private)
    scratch = Path(tempfile.mkdtemp(prefix="duckdb-ft-push-")) if folder is None else None
    try:
        if scratch is not None:
            target = scratch / "export"
        _write(session, cur, row, target, format, dtype)
        if hub_target is None:
            return str(target)
        try:
            what = f"{label}@{row['version']}" if row.get("job_id") else label
            return hub.upload(hub_target, str(target), f"duckdb-ft export of {what} ({format}"
                                                       + (f", job {row['job_id']})" if row.get("job_id") else ")"))
        except RemoteError as e:
            if scratch is None:  # the folder asked for is whole: say so
                raise RemoteError(f"{e} The export itself is complete at {target}.") from None
            raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _fine_tuned(session: Session, cur: Any, name: str) -> dict[str, Any] | None:
    """The catalog row of fine-tuned model ``name`` the session owns (with ``label``, its schema.name), or None
    when ``name`` names no model of the catalog but may name a base model this session can use.

    Raises:
        NotFound: the model has no such version.
        PermissionDenied: not a model it owns, nor a base model it may use: one error for both.
    """
    try:
        schema, model, version = parse_model_ref(name, session.schema)
    except InvalidArgument:
        schema = model = version = None  # 'smollm2-135m', a folder, a hub id: not a model name
    exists = model is not None and modeldb.model_exists(cur, schema, model)
    if not exists and (session.is_admin or _usable_base(session, cur, name)):
        return None  # a base model (for the administrator, resolving it says what else a name may be)
    if not exists or not session.checker().owns("MODEL", f"{schema}.{model}"):
        raise PermissionDenied.of(  # one error: a user cannot tell the two apart
            "OWNERSHIP", "MODEL", f"{schema}.{model}" if model else name, session.role,
            reason="it does not exist or OWNERSHIP is required", hint="SHOW MODELS lists the models you may use")
    session.engine.check_current()
    row = modeldb.get_model(cur, schema, model, version)
    if row is None:
        raise NotFound(f"model '{schema}.{model}' has no version '{version}': SHOW VERSIONS IN MODEL "
                       f"{schema}.{model} lists them")
    return {**row, "label": f"{schema}.{model}"}


def _usable_base(session: Session, cur: Any, name: str) -> bool:
    """Whether a non-administrator may name ``name`` as a base model (built-in, or registered with USAGE): its
    export hands out nothing more than the session can already run, or export merged into a model it owns."""
    try:
        session.base_model(name)
    except PermissionDenied:
        return False
    return True


def _base_row(session: Session, cur: Any, name: str) -> dict[str, Any]:
    """What the writers need of a base model: its source (folder or hub id), no adapter, how it is shown.

    Raises:
        ModelNotFound: the name resolves to no model (what a name may be), before anything is written.
    """
    source = session.base_model(name)
    try:
        models.resolve(source)
    except ModelNotFound:
        try:
            schema, model, _ = parse_model_ref(name, session.schema)
        except InvalidArgument:
            raise  # a folder or hub id: resolving says what was wrong with it
        if Path(name).expanduser().exists():
            raise
        raise ModelNotFound(f"model '{schema}.{model}' does not exist: SHOW MODELS lists the fine-tuned models, "
                            "SHOW BASE MODELS the base models (the administrator may also name a model folder or "
                            "a hub id)") from None
    return {"label": name.strip(), "base_model": source, "adapter": None, "job_id": None, "version": None,
            "shown_base": session.shown_base(source)}


def _beside(target: Path) -> Path:
    """The Modelfile of a single-file GGUF export: ``NAME.Modelfile`` beside ``NAME.gguf``."""
    return target.with_suffix(".Modelfile")


def _write(session: Session, cur: Any, row: dict[str, Any], target: Path, format: str, dtype: str) -> None:
    """Write the export into a temporary folder beside ``target``, then rename it into place."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    except OSError as e:
        raise InvalidArgument(f"cannot write in {target.parent}: {e.strerror or e}; choose a writable folder") \
            from None
    single_file = format in GGUF_FILES and target.suffix == ".gguf"
    placed: list[Path] = []
    try:
        if format == "adapter":
            _write_adapter(row, tmp)
        elif format == "gguf-lora":
            _write_gguf_lora(session, row, tmp, dtype, target.name if single_file else GGUF_FILES[format])
        else:
            merged, tokenizer = merged_model(row)
            if format == "merged":
                _write_merged(merged, tokenizer, tmp, dtype)
            else:
                from .gguf_file import write_gguf

                write_gguf(merged, tokenizer, tmp / "model.gguf", dtype, row["label"])
                name = target.name if single_file else "model.gguf"
                (tmp / "Modelfile").write_text(modelfile.modelfile(
                    f"./{name}", tokenizer, complete.stop_ids(merged, tokenizer), f"{row['label']} ({format})"))
        if not single_file:
            (tmp / "duckdb_ft.json").write_text(json.dumps(_info(session, cur, row, format, dtype), indent=2,
                                                           default=str))
            if target.exists():
                target.rmdir()  # the empty folder the checks allowed: replaced by the finished one
            os.rename(tmp, target)
            return
        os.rename(tmp / "Modelfile", _beside(target))
        placed.append(_beside(target))
        os.rename(tmp / GGUF_FILES[format], target)
    except BaseException:
        for path in placed:
            path.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def _write_gguf_lora(session: Session, row: dict[str, Any], tmp: Path, dtype: str, name: str) -> None:
    """The adapter as ``adapter.gguf`` and a Modelfile whose FROM is the base model's GGUF, to be exported beside
    it (the comment says how)."""
    import shlex
    from types import SimpleNamespace

    from transformers import AutoConfig, GenerationConfig

    from .gguf_lora import write_gguf_lora

    base_path = models.resolve(row["base_model"])
    write_gguf_lora(models.adapter_from_bytes(row["adapter"]), json.loads(row["lora_config"]),
                    AutoConfig.from_pretrained(base_path), tmp / "adapter.gguf", dtype, row["label"])
    tokenizer = models.load_tokenizer(base_path)
    try:
        generation = GenerationConfig.from_pretrained(base_path)
    except OSError:  # no generation_config.json: the tokenizer's end token
        generation = SimpleNamespace(eos_token_id=None)
    stops = complete.stop_ids(SimpleNamespace(generation_config=generation), tokenizer)
    base = session.shown_base(row["base_model"])
    hint = f"duckdb-ft export DATABASE {shlex.quote(base)} base.gguf --format gguf"
    (tmp / "Modelfile").write_text(modelfile.modelfile("./base.gguf", tokenizer, stops, f"{row['label']} (gguf-lora)",
                                                       adapter=f"./{name}", base_hint=hint))


def _info(session: Session, cur: Any, row: dict[str, Any], format: str, dtype: str) -> dict[str, Any]:
    """``duckdb_ft.json``: what was exported, and for a fine-tuned model its job and lineage. The base model is
    named as this session is shown it (never a registered folder's path to a non-administrator)."""
    base = row.get("shown_base") or session.shown_base(row["base_model"])
    if row["adapter"] is None:
        info: dict[str, Any] = {"model": row["label"], "format": format, "base_model": base}
    else:
        info = {"model": row["label"], "version": row.get("version"), "format": format, "base_model": base,
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
    """A fresh fp32 copy of the base model with the row's adapter merged in (not the shared cached module; a base
    model's row has no adapter: the base model itself), and the tokenizer COMPLETE uses."""
    import torch
    from transformers import AutoModelForCausalLM

    base_path = models.resolve(row["base_model"])
    models._quiet()
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if row["adapter"] is None:
        base.eval()
        return base, models.load_tokenizer(base_path)
    from peft import PeftModel, set_peft_model_state_dict

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
