"""Shapes that must agree wherever they are used, each written once: where generation stops, the prompt-fits-the-
context check, the bfloat16-hardware check and the read-only refusal."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import duckdb_ft
from duckdb_ft.ml import complete as completion, devices, models


def _loaded(context: int) -> models.LoadedModel:
    config = SimpleNamespace(max_position_embeddings=context)
    return models.LoadedModel(name="m", path="m", model=SimpleNamespace(config=config), tokenizer=None)


def test_fit_context_gives_the_new_tokens_or_one_error_for_complete_and_evaluate():
    loaded = _loaded(600)
    assert completion.fit_context(loaded, 10, None) == completion.DEFAULT_MAX_TOKENS
    assert completion.fit_context(loaded, 590, None) == 10
    assert completion.fit_context(loaded, 100, 500) == 500
    with pytest.raises(duckdb_ft.InvalidArgument, match="prompt of 600 tokens does not fit the context of 600"):
        completion.fit_context(loaded, 600, None)
    with pytest.raises(duckdb_ft.InvalidArgument, match="plus max_tokens 501 exceeds the context of 600"):
        completion.fit_context(loaded, 100, 501)


def test_stop_ids_are_the_generation_configs_end_tokens_then_padding():
    tok = SimpleNamespace(eos_token_id=2, pad_token_id=0)
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[2, 7]))
    assert completion.stop_ids(model, tok) == [2, 7, 0]
    model.generation_config.eos_token_id = None  # the tokenizer's end token then
    assert completion.stop_ids(model, tok) == [2, 0]
    assert completion.stop_ids(model, SimpleNamespace(eos_token_id=2, pad_token_id=2)) == [2]


def test_bfloat16_native_is_what_training_auto_dtype_and_complete_ask():
    import torch

    from duckdb_ft.ml import training
    from duckdb_ft.options import TrainingOptions

    native = devices.bfloat16_native("cpu")
    assert training.compute_dtype(TrainingOptions(), "cpu") == (torch.bfloat16 if native else torch.float32)
    assert devices.bfloat16_native("cuda:0") == devices.bfloat16_native("cuda")
    assert devices.bfloat16_native("meta") is False


def test_a_read_only_database_refuses_every_write_with_one_message(tmp_path):
    path = str(tmp_path / "ro.duckdb")
    duckdb_ft.connect(path).close()
    ro = duckdb_ft.connect(path, read_only=True)
    try:
        for sql, what in (("SELECT finetune('CREATE', 'm', 'tiny', 'SELECT 1')", "create fine-tuning jobs"),
                          ("SELECT finetune('SWEEP', 'm', 'tiny', 'SELECT 1', NULL, '{}')", "create fine-tuning jobs"),
                          ("SELECT finetune('EVALUATE', 'tiny', 'SELECT 1')", "record evaluations")):
            with pytest.raises(duckdb_ft.InvalidArgument, match=f"the database is read-only: open it read-write to "
                                                                f"{what}"):
                ro.execute(sql).fetchall()
    finally:
        ro.close()


def test_a_missing_argument_is_named_in_the_actions_own_words():
    con = duckdb_ft.connect()
    try:
        for sql, message in (
                ("SELECT finetune('CREATE', NULL, 'tiny', 'SELECT 1')",
                 "finetune('CREATE', name, base_model, training_query [, validation_query [, options]]): the model "
                 "name is missing"),
                ("SELECT finetune('SWEEP', 'm', 'tiny', 'SELECT 1', NULL, NULL)",
                 "the options is missing (options name the values to try as lists)"),
                ("SELECT finetune('ESTIMATE', 'tiny', NULL)", "finetune('ESTIMATE', base_model, training_query "
                                                              "[, validation_query [, options]]): the training query")):
            with pytest.raises(duckdb_ft.InvalidArgument) as e:
                con.execute(sql).fetchall()
            assert message in str(e.value)
    finally:
        con.close()
