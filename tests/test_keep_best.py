"""keep_best and early stopping: a job whose validation loss rises stops after ``early_stopping_patience``
evaluations without improvement, and the adapter it stores is the best evaluation's (its loss on the validation
rows, recomputed from the stored bytes, is the best validation loss of the history)."""

from __future__ import annotations

import json

import pytest

from conftest import create, describe, one, rows, wait
from duckdb_ft.ml import data, models, training

# Training teaches answers the validation rows contradict: after a step or two the validation loss rises.
DIVERGE = {"max_epochs": 6, "batch_size": 4, "learning_rate": 0.02, "lora_dropout": 0.0, "warmup_ratio": 0.0,
           "eval_steps": 1, "lora_r": 8}
TRAIN_Q = "SELECT 'Code word ' || i || '?' AS prompt, 'alpha ' || i AS completion FROM range(16) t(i)"
VALID_Q = "SELECT 'Code word ' || i || '?' AS prompt, 'omega zulu ' || (i * 3) AS completion FROM range(8) t(i)"


def stored_adapter_loss(con, model_name: str, base: str, job_id: str, max_seq_length: int) -> float:
    """The validation rows' completion loss under the adapter stored for ``model_name``, from its bytes."""
    from peft import get_peft_model, set_peft_model_state_dict

    lora_config, blob = rows(con, "SELECT lora_config, adapter FROM duckdb_ft.models WHERE name = ?", model_name)[0]
    model = get_peft_model(models.load_for_training(base), models.lora_config_from_dict(json.loads(lora_config)))
    set_peft_model_state_dict(model, models.adapter_from_bytes(bytes(blob)))
    tok = models.load_tokenizer(base)
    pairs = rows(con, "SELECT prompt, completion FROM duckdb_ft.job_rows WHERE job_id = ? AND split = 'validation' "
                      "ORDER BY idx", job_id)
    examples = data.tokenize_pairs(tok, pairs, max_seq_length)
    return training.evaluate(model, examples, 4, tok.pad_token_id, "cpu")


@pytest.mark.slow
def test_rising_validation_loss_stops_early_and_keeps_the_best_adapter(con, tiny_model_path):
    job = create(con, "picky", tiny_model_path, TRAIN_Q, VALID_Q, {**DIVERGE, "early_stopping_patience": 2})
    assert wait(con, job) == "SUCCESS"
    d = describe(con, job)
    history = rows(con, "SELECT step, validation_loss FROM finetune_history(?) WHERE validation_loss IS NOT NULL "
                        "ORDER BY step", job)
    losses = [v for _, v in history]
    best_step, best = min(history, key=lambda r: r[1])
    assert d["stopped_early"] is True
    assert d["step"] < d["total_steps"], "the job ran to the end: it did not stop early"
    assert d["step"] == best_step + 2  # two evaluations without improvement, then stop
    assert min(losses[-2:]) > best
    assert d["best_step"] == best_step
    assert d["training_result"]["validation_loss"] == pytest.approx(best)
    assert stored_adapter_loss(con, "picky", tiny_model_path, job, 512) == pytest.approx(best, rel=1e-4)
    # trained_tokens counts the passes actually made, as they are billed: tokens per epoch x epochs run
    per_epoch = one(con, "SELECT train_tokens FROM duckdb_ft.jobs WHERE id = ?", job)
    epochs_run = d["step"] / (d["total_steps"] / DIVERGE["max_epochs"])
    assert d["trained_tokens"] == round(per_epoch * epochs_run) < per_epoch * DIVERGE["max_epochs"]


@pytest.mark.slow
def test_keep_best_false_stores_the_last_steps_adapter(con, tiny_model_path):
    job = create(con, "last", tiny_model_path, TRAIN_Q, VALID_Q, {**DIVERGE, "max_epochs": 2, "keep_best": False})
    assert wait(con, job) == "SUCCESS"
    d = describe(con, job)
    history = rows(con, "SELECT step, validation_loss FROM finetune_history(?) WHERE validation_loss IS NOT NULL "
                        "ORDER BY step", job)
    last_step, last = history[-1]
    assert d["stopped_early"] is False and d["step"] == d["total_steps"] == last_step
    assert min(v for _, v in history) < last, "the validation loss did not rise: the test shows nothing"
    assert d["best_step"] == last_step
    assert stored_adapter_loss(con, "last", tiny_model_path, job, 512) == pytest.approx(last, rel=1e-4)


def test_selection_options_are_checked_at_create(con, tiny_model_path):
    import duckdb

    with pytest.raises(duckdb.Error, match="early_stopping_patience must be an integer from 0 to 1000"):
        create(con, "bad", tiny_model_path, TRAIN_Q, None, {"early_stopping_patience": -1})
    with pytest.raises(duckdb.Error, match="keep_best must be true or false"):
        create(con, "bad", tiny_model_path, TRAIN_Q, None, {"keep_best": "yes"})
    assert one(con, "SELECT count(*) FROM duckdb_ft.jobs") == 0
