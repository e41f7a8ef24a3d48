"""ESTIMATE's training-time estimate: a short measured run of the real training loop on the real model, cached per
machine and model.

A calibration trains a throw-away LoRA for a few optimizer steps on a sample of the job's own rows (tokenized as
training tokenizes them), with the job's batch size, rank, modules, dtype and sequence length, and records the
seconds per trained token after the first (warm-up) step. The figure is cached in ``calibration.json`` of the
model cache, keyed by machine, model and those options; ESTIMATE multiplies it by the tokens it will train, and adds
validation at a third of the per-token cost (forward only).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import threading
import time
from typing import Any

from ..options import TrainingOptions
from . import data, models

STEPS = 4  # measured steps, after one warm-up step
_lock = threading.Lock()


def _key(path: str, opts: TrainingOptions) -> str:
    import torch

    device = models.device()
    return json.dumps({
        "machine": platform.node(), "cpus": os.cpu_count(), "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "torch": torch.__version__,
        "model": os.path.realpath(path), "batch_size": opts.batch_size, "lora_r": opts.lora_r,
        "target_modules": opts.target_modules, "dtype": opts.dtype, "max_seq_length": opts.max_seq_length,
        "gradient_checkpointing": opts.gradient_checkpointing,
    }, sort_keys=True)


def _cache_file() -> str:
    return os.path.join(models.cache_dir(), "calibration.json")


def calibration(path: str, opts: TrainingOptions, sample: list[tuple[str, str]]) -> tuple[dict[str, float], bool]:
    """({seconds_per_token, peak_rss_mib}, whether it came from the cache) for this machine, model and options.

    ``seconds_per_token``: measured training seconds per trained token; ``peak_rss_mib``: the peak resident memory
    of the measuring process once it had loaded the model and trained (the model, optimizer state, activations of
    a step). ``sample``: (prompt, completion) rows of the job, at least one; they are repeated to fill the steps.
    """
    key = _key(path, opts)
    with _lock:
        try:
            with open(_cache_file()) as f:
                cache = json.load(f)
        except (OSError, ValueError):
            cache = {}
        if isinstance(cache.get(key), dict):
            return cache[key], True
        value = _measure(path, opts, sample)
        cache[key] = value
        try:
            os.makedirs(os.path.dirname(_cache_file()), exist_ok=True)
            tmp = _cache_file() + f".{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(cache, f, indent=1)
            os.replace(tmp, _cache_file())
        except OSError:
            pass  # an unwritable cache: measure again next time
        return value, False


def _measure(path: str, opts: TrainingOptions, sample: list[tuple[str, str]]) -> float:
    from . import training

    tokenizer = models.load_tokenizer(path)
    examples = data.tokenize_pairs(tokenizer, sample, opts.max_seq_length)
    if not examples:
        raise ValueError("no example to calibrate on")
    need = opts.batch_size * opts.gradient_accumulation_steps * (STEPS + 1)
    examples = (examples * (need // len(examples) + 1))[:need]
    run = dataclasses.replace(opts, max_epochs=1, eval_steps=0, warmup_ratio=0.0, keep_best=False,
                              early_stopping_patience=0)
    seen: list[dict[str, Any]] = []

    def on_step(m: dict[str, Any]) -> None:
        if "training_loss" in m and "validation_loss" not in m:
            seen.append(dict(m))

    base = models.load_for_training(path)
    start = time.perf_counter()
    training.train(base, examples, examples[:1], run, tokenizer.pad_token_id, training.Hooks(on_step=on_step))
    if len(seen) >= 2:
        first, last = seen[0], seen[-1]
        per_token = (last["elapsed_s"] - first["elapsed_s"]) / max(1, last["tokens"] - first["tokens"])
    else:
        per_token = (time.perf_counter() - start) / max(1, sum(len(e.input_ids) for e in examples))
    return {"seconds_per_token": per_token, "peak_rss_mib": _peak_rss_mib()}


def _peak_rss_mib() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB elsewhere


#: Memory of one tokenized training token held by the worker: an int32 id in data.TokenizedExamples' buffer (plus
#: 16 bytes a row of index: under one a token on rows over 16 tokens; memory-mapped, the kernel may page it out).
BYTES_PER_EXAMPLE_TOKEN = 5
