"""Shared fixtures (a temporary model cache, the real default model, a tiny two-layer Llama, an in-memory database,
the ``faq`` table) and the helpers every test file uses (``rows``, ``one``, ``create``, ``describe``, ``wait``,
``catalog_counts``, ``python_output``; ``from conftest import ...``).

The tiny model has random weights but the real SmolLM2 tokenizer and chat template, so every code path
(chat templating, padding, masking, LoRA) is the real one; it trains and generates in milliseconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Every user path points at a temporary folder: the converted default model too (converted once per run).
_CACHE = Path(os.environ.get("DUCKDB_FT_TEST_CACHE") or Path(__file__).resolve().parent.parent / ".pytest_cache" / "model-cache")
os.environ["DUCKDB_FT_CACHE"] = str(_CACHE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: A short job on the tiny model.
FAST = {"max_epochs": 2, "batch_size": 4}


def python_output(code, unset=(), **env):
    """What ``python -c code`` prints (stripped), in a fresh interpreter whose environment is this one's without the
    variables ``unset`` and with ``env`` added: for what happens at import time, before torch loads."""
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k not in unset} | env
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True,
                          check=True).stdout.strip()


def rows(con, sql, *params):
    """Every row of a query (fully fetched: DuckDB 2 keeps a connection busy after a partial fetch)."""
    return con.execute(sql, list(params)).fetchall()


def one(con, sql, *params):
    """The single value of a one-row, one-column query."""
    return rows(con, sql, *params)[0][0]


def create(con, name, base, query, validation=None, options=None):
    """finetune('CREATE', ...) with options as a dict; the job id."""
    return one(con, "SELECT finetune('CREATE', ?, ?, ?, ?, ?)", name, base, query, validation,
               json.dumps(options) if options is not None else None)


def describe(con, job_id):
    return json.loads(one(con, "SELECT finetune('DESCRIBE', ?)", job_id))


def wait(con, job_id, timeout=300):
    return one(con, "SELECT finetune('WAIT', ?, ?)", job_id, timeout)


def catalog_counts(con):
    """Rows in each table of the duckdb-ft catalog that a job writes."""
    return {t: one(con, f"SELECT count(*) FROM duckdb_ft.{t}")
            for t in ("jobs", "job_rows", "metrics", "models", "checkpoints")}


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


@pytest.fixture
def faq(con):
    """``con`` with table faq: 24 question/answer pairs (and a number column n)."""
    con.execute("CREATE TABLE faq AS SELECT 'What is code number ' || i || '?' AS question, "
                "'The code is ' || (i * 7) || '.' AS answer, i AS n FROM range(24) t(i)")
    return con
