"""What the benchmarks share about the machine they ran on and the model they may run: the processor, the load
average, and the test suite's tiny model (imported by the scripts beside it, whose folder is first on sys.path)."""

from __future__ import annotations

import os
import platform


def cpu() -> str:
    """The processor's model name and the number of cores."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def load() -> str:
    """The 1, 5 and 15 minute load averages, or n/a."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def tiny_model(path: str | os.PathLike) -> str:
    """The test suite's tiny model (two layers, hidden 64, random weights seeded 0, SmolLM2's tokenizer), saved as a
    Hugging Face folder at ``path``: its path."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from duckdb_ft.ml import models

    tok = AutoTokenizer.from_pretrained(models.resolve(models.DEFAULT_MODEL))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, initializer_range=0.3)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
