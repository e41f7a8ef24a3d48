"""Base models: the built-in alias, local folders, hub ids offline, and the conversion cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from duckdb_ft.ml import models
from duckdb_ft.errors import ModelLoadError, ModelNotFound


def test_default_alias_converts_to_fp32_hf_folder(default_model_path):
    folder = Path(default_model_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert "quantization_config" not in config
    assert config.get("dtype", config.get("torch_dtype")) == "float32"
    assert any(folder.glob("*.safetensors"))
    assert (folder / "tokenizer.json").is_file()


def test_second_resolve_reuses_the_cache(default_model_path, monkeypatch):
    import transformers

    def converting_again(*args, **kwargs):
        raise AssertionError("the converted folder was not reused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", converting_again)
    assert models.resolve("SmolLM2-135M") == default_model_path  # aliases are case-insensitive


def test_local_folder_is_a_base_model(tiny_model_path):
    assert models.resolve(tiny_model_path) == str(Path(tiny_model_path).resolve())


def test_loaded_models_are_cached_in_the_process(tiny_model_path):
    assert models.load(tiny_model_path) is models.load(tiny_model_path)


def test_unknown_name_says_what_is_accepted():
    with pytest.raises(ModelNotFound, match=r"unknown model 'no-such-model'.*smollm2-135m.*folder"):
        models.resolve("no-such-model")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFound, match="has no config.json"):
        models.resolve(str(tmp_path))


def test_hub_id_offline_names_the_model_and_the_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match=r"'someorg/some-model'.*pass its folder"):
        models.resolve("someorg/some-model")


def test_unwritable_cache_is_a_clear_error(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(models.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(ModelLoadError, match=r"cannot write the model cache folder.*DUCKDB_FT_CACHE"):
        models.resolve("smollm2-135m")
    assert blocker.read_text() == "not a folder"
