"""Shared fixtures: a temporary model cache, the real default model, and a tiny two-layer Llama.

The tiny model has random weights but the real SmolLM2 tokenizer and chat template, so every code path
(chat templating, padding, masking, LoRA) is the real one; it trains and generates in milliseconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every user path points at a temporary folder: the converted default model too (converted once per run).
_CACHE = Path(os.environ.get("DUCKDB_FT_TEST_CACHE") or Path(__file__).resolve().parent.parent / ".pytest_cache" / "model-cache")
os.environ["DUCKDB_FT_CACHE"] = str(_CACHE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def default_model_path() -> str:
    """The real SmolLM2-135M-Instruct, converted into the test cache (about 20 s the first time)."""
    from duckdb_ft.ml import models

    return models.resolve(models.DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_model_path(default_model_path, tmp_path_factory) -> str:
    """A two-layer Llama (hidden 64) with SmolLM2's tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(default_model_path)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        # A wide init: with the default 0.02 the frozen tied embeddings cap every logit near 1, so no LoRA could
        # move the loss far from ln(vocab) and fine-tuning tests could not tell learning from noise.
        initializer_range=0.3,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture
def con():
    """An in-memory database with duckdb-ft installed."""
    import duckdb_ft

    c = duckdb_ft.connect()
    yield c
    c.close()
