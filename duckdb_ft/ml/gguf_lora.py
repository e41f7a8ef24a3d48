"""A LoRA adapter alone as one GGUF adapter file, as llama.cpp's ``convert_lora_to_gguf.py`` writes it: what
``llama-server --lora FILE`` and Ollama's ``ADAPTER FILE`` take, over the base model's GGUF (``export BASE
--format gguf``).

Metadata: ``general.architecture`` (the base model's, ``llama``), ``general.type`` ``adapter``, ``adapter.type``
``lora`` and ``adapter.lora.alpha``. Tensors: for each adapted weight, ``<llama.cpp name>.lora_a`` (rank x
in-features, PEFT's ``lora_A``) and ``<llama.cpp name>.lora_b`` (out-features x rank, ``lora_B``); the query and
key projections' ``lora_b`` rows are permuted into llama.cpp's rotary layout, as the base weights are
(``gguf_file.py``), so ``base + lora_b @ lora_a * alpha / rank`` is the merged export's tensor. llama.cpp scales
by ``alpha / rank``; an rsLoRA adapter (PEFT scales by ``alpha / sqrt(rank)``) is written with the alpha that
gives PEFT's scale.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument
from .gguf_file import FILE_TYPES, permute_for_gguf

_PREFIX = "base_model.model."
_PARTS = {".lora_A.weight": "lora_a", ".lora_B.weight": "lora_b"}


def scale(lora_config: dict[str, Any]) -> float:
    """PEFT's scale of the update ``lora_B @ lora_A``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
    r, alpha = int(lora_config["r"]), float(lora_config["lora_alpha"])
    return alpha / math.sqrt(r) if lora_config.get("use_rslora") else alpha / r


def _pairs(adapter: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The adapter's tensors by the Hugging Face name of the weight they adapt: ``{"lora_a": A, "lora_b": B}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, tensor in adapter.items():
        part = next((p for p in _PARTS if key.endswith(p)), None)
        if part is None or not key.startswith(_PREFIX):
            raise InvalidArgument(f"the adapter holds '{key}', which a llama.cpp LoRA adapter cannot carry (only "
                                  "lora_A/lora_B of linear layers): export --format gguf, the merged model")
        weight = key[len(_PREFIX):-len(part)] + ".weight"
        out.setdefault(weight, {})[_PARTS[part]] = tensor
    missing = [w for w, p in out.items() if len(p) != 2]
    if missing:
        raise InvalidArgument(f"the adapter of '{missing[0]}' lacks lora_A or lora_B: it cannot be exported")
    return out


def write_gguf_lora(adapter: dict[str, Any], lora_config: dict[str, Any], config: Any, path: Path, dtype: str,
                    name: str) -> None:
    """Write ``adapter`` (PEFT's state dict: ``base_model.model.<module>.lora_A.weight`` ...) of a model whose
    base has ``config`` (a Llama ``PretrainedConfig``) as one GGUF LoRA adapter file at ``path``."""
    import gguf
    import numpy as np

    if getattr(config, "model_type", "") != "llama":
        raise InvalidArgument(f"GGUF export supports the llama architecture (SmolLM2, Llama, ...), not "
                              f"'{getattr(config, 'model_type', '?')}': export --format adapter (PEFT) instead")
    if dtype not in FILE_TYPES:
        raise InvalidArgument(f"unknown GGUF dtype '{dtype}': use one of {', '.join(FILE_TYPES)}")
    if lora_config.get("bias", "none") != "none" or lora_config.get("use_dora") or lora_config.get("modules_to_save"):
        raise InvalidArgument("this adapter trains more than LoRA's two matrices (bias, DoRA or saved modules): "
                              "export --format gguf, the merged model")
    n_head = config.num_attention_heads
    n_kv = config.num_key_value_heads or n_head
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tensors = []
    for weight, pair in sorted(_pairs(adapter).items()):
        if weight == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            raise InvalidArgument("the adapter adapts lm_head, which this base model ties to its embeddings (llama.cpp "
                                  "ignores it): export --format gguf, the merged model")
        out = names.get_name(weight, try_suffixes=(".weight",))
        if out is None:
            raise InvalidArgument(f"GGUF export cannot name tensor '{weight}' for llama.cpp: export --format gguf")
        a = pair["lora_a"].detach().to("cpu").float().numpy()
        b = pair["lora_b"].detach().to("cpu").float().numpy()
        if weight.endswith("q_proj.weight"):
            b = permute_for_gguf(b, n_head)  # rows, as the base weight's: lora_a's columns are the inputs
        elif weight.endswith("k_proj.weight"):
            b = permute_for_gguf(b, n_kv)
        if dtype == "f16":
            a, b = a.astype(np.float16), b.astype(np.float16)
        tensors += [(out + ".lora_a", a), (out + ".lora_b", b)]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, scale(lora_config) * int(lora_config["r"]))  # llama.cpp: alpha / r
    w.add_name(name)
    w.add_file_type(FILE_TYPES[dtype])
    for tensor_name, data in tensors:
        w.add_tensor(tensor_name, np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
