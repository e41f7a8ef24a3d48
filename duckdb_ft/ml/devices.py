"""What a machine can train on: CREATE's checks of the scale-out options against it, and the settings a process
loads and trains with on a CPU or a CUDA GPU, as pure functions of what the machine has (so they are tested here,
on a CPU, for the GPU as well), and the dtype a training step computes in (``compute_dtype``, ``autocast``).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument
from ..options import TrainingOptions


@dataclass(frozen=True)
class Machine:
    """What this machine offers training: CUDA GPUs (0 without CUDA), usable CPU cores, bitsandbytes."""

    gpus: int
    cores: int
    bitsandbytes: bool = False
    flash_attention: bool = False
    bf16: bool = True
    """Whether the GPUs compute bfloat16 (Ampere and later)."""


def this_machine() -> Machine:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Machine(gpus=gpus, cores=cpu_cores(),
                   bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None,
                   flash_attention=importlib.util.find_spec("flash_attn") is not None,
                   bf16=bool(gpus) and bfloat16_native("cuda"))


def bfloat16_native(device: str) -> bool:
    """Whether ``device`` ("cuda", "cpu"; an index after a colon is ignored) multiplies bfloat16 natively: a CUDA
    GPU with bf16 (Ampere and later), a CPU with AVX512-BF16 or AMX. Elsewhere bfloat16 is emulated, slower than
    float32: COMPLETE's ``dtype`` "bfloat16" is refused there, and training's "auto" dtype stays float32."""
    import torch

    kind = device.split(":")[0]
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return any(getattr(torch.cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported",
                                                                    "_is_amx_tile_supported"))
    return False


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_machine(opts: TrainingOptions, machine: Machine | None = None) -> None:
    """Raise InvalidArgument for scale-out options this machine cannot run: more devices than it has,
    quantization without a CUDA GPU or bitsandbytes, FSDP of quantized weights. ``machine`` None: this one."""
    if machine is None and opts.devices == 1 and opts.strategy == "ddp" and opts.quantization == "none":
        return  # one process as always: nothing to ask the machine (and no torch import at CREATE)
    m = machine or this_machine()
    problems = []
    if m.gpus and opts.devices > m.gpus:
        problems.append(f"devices {opts.devices} is more than the {m.gpus} CUDA GPU(s) of this machine: use "
                        f"at most {m.gpus} (one training process per GPU)")
    elif not m.gpus and opts.devices > m.cores:
        problems.append(f"devices {opts.devices} is more than the {m.cores} CPU core(s) this process may use and "
                        f"there is no CUDA GPU: use at most {m.cores} CPU processes")
    if opts.strategy == "fsdp" and opts.quantization != "none":
        problems.append(f'strategy "fsdp" cannot shard {opts.quantization} weights (bitsandbytes keeps them '
                        'packed per device): use strategy "ddp" with quantization, or no quantization')
    if opts.quantization != "none":
        if not m.gpus:
            problems.append(f'quantization "{opts.quantization}" needs a CUDA GPU (bitsandbytes QLoRA) and this '
                            'machine has none: remove it to train the full-precision weights on the CPU')
        elif not m.bitsandbytes:
            problems.append(f'quantization "{opts.quantization}" needs bitsandbytes: '
                            "pip install 'duckdb-ft[gpu]' (or pip install bitsandbytes)")
    if problems:
        raise InvalidArgument("this machine cannot run these FINETUNE options: " + "; ".join(problems))


@dataclass(frozen=True)
class LoadSettings:
    """How a process loads and trains the base model."""

    device: str
    dtype: str
    """The base weights' dtype: "float32" on a CPU (a bf16 copy changed greedy answers), "bfloat16" on a GPU
    that computes it (half the memory; LoRA weights stay float32 under autocast)."""
    attn_implementation: str | None
    """None: duckdb-ft's CPU attention kernels; on a GPU "flash_attention_2" when installed, else "sdpa"."""
    cpu_kernels: bool
    """duckdb-ft's CPU-only paths (explicit-product attention, fast dropout, thread fitting)."""
    quantization: str = "none"
    """"4bit" (NF4, bf16 compute, double quantization) or "8bit": bitsandbytes, then peft's
    ``prepare_model_for_kbit_training``."""


def load_settings(machine: Machine, quantization: str = "none") -> LoadSettings:
    """The settings for ``machine``: CUDA GPUs get bf16 weights (fp16 where bf16 is not computed), sdpa or
    FlashAttention and none of the CPU kernels; a CPU gets float32 weights and the CPU kernels."""
    if not machine.gpus:
        if quantization != "none":
            raise InvalidArgument(f'quantization "{quantization}" needs a CUDA GPU: this machine has none')
        return LoadSettings("cpu", "float32", None, True)
    return LoadSettings("cuda", "bfloat16" if machine.bf16 else "float16",
                        "flash_attention_2" if machine.flash_attention else "sdpa", False, quantization)


def quantization_config(settings: LoadSettings) -> Any:
    """transformers' BitsAndBytesConfig for ``settings`` (None without quantization)."""
    if settings.quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if settings.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, settings.dtype))


def compute_dtype(opts: TrainingOptions, device: str) -> Any:
    """The dtype matrix products run in: ``opts.dtype``, where "auto" is bfloat16 on hardware that multiplies it
    natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX) and float32 elsewhere."""
    import torch

    if opts.dtype != "auto":
        return getattr(torch, opts.dtype)
    return torch.bfloat16 if bfloat16_native(device) else torch.float32


def autocast(device: str, dtype: Any = None) -> Any:
    """bf16 autocast (weights stay fp32: the cached base model is shared with COMPLETE), or no autocast."""
    import torch

    if dtype is None or dtype == torch.float32:
        return torch.autocast(device, enabled=False)
    return torch.autocast(device, dtype=dtype)
