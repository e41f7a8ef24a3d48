"""Preference tuning (FINETUNE option ``method`` "dpo" and "kto", ml/preference.py): the first step's DPO loss is
ln 2 when the policy starts at its reference, the first steps' losses are TRL's DPOTrainer's and KTOTrainer's on the
same data, seed and hyperparameters, bad preference rows are refused with counts and change nothing, and jobs
train from SQL with TRL's metrics in DESCRIBE and finetune_history."""

from __future__ import annotations

import json
import math

import pytest

from conftest import catalog_counts, create, describe, one, rows, wait

#: Pairs where the chosen answer is polite and gives an order number, the rejected one curt.
PREFS = [(f"Where is my order {i}?", f"Thank you for asking! Order number {1000 + i} ships today.", "No idea.")
         for i in range(4)]
#: One step per epoch over all rows (so TRL's sampler order cannot matter), float32, no warm-up.
EXACT = {"max_epochs": 2, "batch_size": 4, "learning_rate": 0.01, "warmup_ratio": 0.0, "dtype": "float32",
         "lora_r": 4, "lora_alpha": 8, "seed": 42}


def _train(path, method, rows_, opts):
    """Our loop's per-step training losses on ``rows_`` (no validation)."""
    from duckdb_ft.ml import data, models, preference, training
    from duckdb_ft.options import TrainingOptions

    options = TrainingOptions(method=method, **opts)
    tok = models.load_tokenizer(path)
    examples = preference.tokenize(tok, rows_, method, options.max_seq_length, options.batch_size, data.TokenStats())
    losses = []
    training.train(models.load_for_training(path), examples, [], options, tok.pad_token_id,
                   training.Hooks(on_step=lambda m: losses.append(m["training_loss"])),
                   objective=preference.objective(options))
    return losses


def _trl_losses(path, method, records, opts, tmp_path):
    """TRL's per-step losses: its trainer on the same tiny model, LoRA (same seed, shape), data and optimizer."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model

    from duckdb_ft.ml import models, training
    from duckdb_ft.options import TrainingOptions

    trl = pytest.importorskip("trl", reason="TRL is in the test extra: pip install -e '.[test]'")
    options = TrainingOptions(**opts)
    base = models.load_for_training(path)
    torch.manual_seed(options.seed)
    model = get_peft_model(base, training.lora_config(base, options))
    common = dict(output_dir=str(tmp_path / method), per_device_train_batch_size=options.batch_size,
                  num_train_epochs=options.max_epochs, learning_rate=options.learning_rate, lr_scheduler_type="linear",
                  warmup_steps=0, weight_decay=0.0, max_grad_norm=options.max_grad_norm, logging_steps=1,
                  report_to=[], use_cpu=True, seed=options.seed, bf16=False, gradient_checkpointing=False,
                  save_strategy="no", beta=0.1, max_length=options.max_seq_length, optim="adamw_torch")
    if method == "dpo":
        trainer_class, config = trl.DPOTrainer, trl.DPOConfig(**common, loss_type=["sigmoid"])
    else:
        trainer_class, config = trl.KTOTrainer, trl.KTOConfig(**common)
    losses = []

    class Recording(trainer_class):
        def compute_loss(self, *args, **kwargs):
            loss = super().compute_loss(*args, **kwargs)
            if self.model.training:
                losses.append(float(loss.detach()))
            return loss

    tok = models.load_tokenizer(path)
    trainer = Recording(model=model, args=config, train_dataset=Dataset.from_list(records), processing_class=tok)
    trainer.train()
    return losses


def _chat(role, text):
    return [{"role": role, "content": text}]


def test_first_dpo_step_loss_is_ln2_when_the_policy_starts_at_the_reference(tiny_model_path):
    losses = _train(tiny_model_path, "dpo", [(p, c, r, None) for p, c, r in PREFS], {**EXACT, "max_epochs": 1})
    import torch

    assert losses[0] == pytest.approx(float(torch.tensor(math.log(2))), abs=1e-7)  # ln 2 in float32


@pytest.mark.slow  # TRL's chunked log-probabilities take about 10 s a step on a CPU
def test_dpo_losses_match_trl_dpotrainer_for_the_first_steps(tiny_model_path, tmp_path):
    ours = _train(tiny_model_path, "dpo", [(p, c, r, None) for p, c, r in PREFS], EXACT)
    theirs = _trl_losses(tiny_model_path, "dpo", [{"prompt": _chat("user", p), "chosen": _chat("assistant", c),
                                                   "rejected": _chat("assistant", r)} for p, c, r in PREFS],
                         EXACT, tmp_path)
    assert len(ours) == len(theirs) == 2
    assert ours[1] < ours[0]  # it learns: the steps differ, so agreement after step 1 means the updates agree
    assert ours == pytest.approx(theirs, rel=1e-4)


@pytest.mark.slow
def test_kto_losses_match_trl_ktotrainer_for_the_first_steps(tiny_model_path, tmp_path):
    unpaired = [(p, c if i % 2 == 0 else r, None, i % 2 == 0) for i, (p, c, r) in enumerate(PREFS)]
    ours = _train(tiny_model_path, "kto", unpaired, EXACT)
    theirs = _trl_losses(tiny_model_path, "kto", [{"prompt": _chat("user", p), "completion": _chat("assistant", c),
                                                   "label": label} for p, c, _, label in unpaired], EXACT, tmp_path)
    assert len(ours) == len(theirs) == 2
    assert ours[0] == pytest.approx(0.5, abs=1e-6)  # policy = reference and KL clamped at 0: 1 - sigmoid(0)
    assert ours[1] < ours[0]
    assert ours == pytest.approx(theirs, rel=1e-4)


@pytest.fixture
def feedback(con):
    """``con`` with table feedback: 12 drafts per kind of question, a polite answer kept and a curt one not."""
    con.execute("""CREATE TABLE feedback AS SELECT 'Where is my order ' || i || '?' AS question,
                   'Thank you for asking! Order number ' || (1000 + i) || ' ships today.' AS kept,
                   'No idea.' AS discarded, i % 3 <> 0 AS thumbs_up FROM range(12) t(i)""")
    return con


DPO_QUERY = "SELECT question AS prompt, kept AS chosen, discarded AS rejected FROM feedback"


@pytest.mark.parametrize("query, options, message", [
    ("SELECT question AS prompt, kept AS chosen FROM feedback", {"method": "dpo"},
     "must return columns prompt, chosen and rejected; it returned: prompt VARCHAR, chosen VARCHAR"),
    ("SELECT question AS prompt, kept AS completion, 'yes' AS label FROM feedback", {"method": "kto"},
     "column label of the training query must be BOOLEAN"),
    ("SELECT question AS prompt, kept AS chosen, CASE WHEN thumbs_up THEN discarded ELSE kept END AS rejected "
     "FROM feedback", {"method": "dpo"}, "4 training rows with chosen equal to rejected (nothing to prefer) "
                                         "(rows 1, 4, 7, 10)"),
    ("SELECT question AS prompt, kept AS chosen, CASE WHEN thumbs_up THEN discarded END AS rejected FROM feedback",
     {"method": "dpo"}, "4 training rows with a NULL rejected"),
    ("SELECT question AS prompt, kept AS completion, CASE WHEN thumbs_up THEN true END AS label FROM feedback",
     {"method": "kto"}, "4 training rows with a NULL label"),
    (DPO_QUERY, {"method": "dpo", "beta": 0}, "beta must be in (0.0, 100.0]"),
    (DPO_QUERY, {"method": "kto", "loss_type": "ipo"}, 'loss_type "ipo" is a dpo loss'),
    (DPO_QUERY, {"reference": "somebody"}, 'reference is the reference policy of methods "dpo" and "kto"'),
    (DPO_QUERY, {"method": "dpo", "reference": "nowhere"}, "reference 'nowhere' is no fine-tuned model"),
    (DPO_QUERY, {"method": "dpo", "pii": "mask"}, 'method "dpo" takes pii "keep"'),
])
def test_bad_preference_data_is_refused_with_counts_and_changes_nothing(feedback, tiny_model_path, query, options,
                                                                        message):
    import duckdb_ft

    before = catalog_counts(feedback)
    with pytest.raises(duckdb_ft.InvalidArgument if "no fine-tuned" not in message else duckdb_ft.NotFound,
                       match=".*" + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace(".", r"\.")):
        create(feedback, "polite", tiny_model_path, query, options=options)
    assert catalog_counts(feedback) == before


@pytest.mark.parametrize("method, query", [
    ("dpo", DPO_QUERY),
    ("kto", "SELECT question AS prompt, CASE WHEN thumbs_up THEN kept ELSE discarded END AS completion, "
            "thumbs_up AS label FROM feedback"),
])
def test_preference_job_trains_from_sql_and_shows_trl_metrics(feedback, tiny_model_path, method, query):
    job = create(feedback, f"polite_{method}", tiny_model_path, query,
                 options={"method": method, "max_epochs": 1, "batch_size": 4, "learning_rate": 0.01})
    assert wait(feedback, job) == "SUCCESS"
    d = describe(feedback, job)
    assert d["options"]["method"] == method
    shown = d["method_metrics"]
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert math.isfinite(shown[name]), name
    assert shown["rewards/margins"] > 0  # chosen answers gained on rejected ones
    history = rows(feedback, "SELECT step, training_loss, method_metrics FROM finetune_history(?) ORDER BY step",
                   job)
    assert len(history) >= 3 and all(m is not None and "rewards/chosen" in m for _, _, m in history)
    assert history[0][1] == pytest.approx(math.log(2) if method == "dpo" else 0.5, abs=1e-6)
    assert history[-1][1] < history[0][1]
    if method == "dpo":
        assert "rewards/accuracies" in history[-1][2]
        assert one(feedback, "SELECT count(*) FROM duckdb_ft.job_rows WHERE job_id = ? AND rejected = 'No idea.'",
                   job) == 12
    else:
        assert "kl" in history[-1][2]
        assert one(feedback, "SELECT count(*) FILTER (label) FROM duckdb_ft.job_rows WHERE job_id = ?", job) == 8
    table = rows(feedback, "SELECT method_metrics['rewards/margins'] FROM finetune('DESCRIBE', ?)", job)
    assert table[0][0] == pytest.approx(shown["rewards/margins"])
    assert json.loads(one(feedback, "SELECT finetune('DESCRIBE', ?)", job))["status"] == "SUCCESS"


@pytest.mark.slow  # two jobs' worth: a DPO job trained to its end and an EVALUATE of two models
def test_dpo_beats_the_base_model_on_held_out_preference_accuracy_beyond_noise(con, tiny_model_path):
    con.execute("""CREATE TABLE feedback AS
        SELECT i AS id, ['Where is my order ', 'Any news on order ', 'When will order ', 'Has order '][i % 4 + 1]
                   || (4100 + i) || ['?', '?', ' arrive?', ' shipped yet?'][i % 4 + 1] AS question,
               'Thank you! Order ' || (4100 + i) || ' ships today.' AS kept,
               ['No idea, ask someone else.', 'Not my problem, ask someone.', 'Dunno, check the website.',
                'Stop asking me about it.'][i % 4 + 1] AS discarded, i % 4 = 1 AS held_out
        FROM range(48) t(i)""")
    job = create(con, "polite", tiny_model_path,
                 "SELECT question AS prompt, kept AS chosen, discarded AS rejected FROM feedback WHERE NOT held_out",
                 options={"method": "dpo", "beta": 0.03, "learning_rate": 5e-3, "max_epochs": 3, "batch_size": 8})
    assert wait(con, job) == "SUCCESS"
    summary = json.loads(one(con, "SELECT finetune('EVALUATE', ?, ?, ?)", json.dumps([tiny_model_path, "polite"]),
                             "SELECT id, question AS prompt, kept AS completion, discarded AS rejected "
                             "FROM feedback WHERE held_out",
                             json.dumps({"max_tokens": 1, "metrics": ["preference_accuracy"]})))
    base, tuned = (summary["models"][m]["preference_accuracy"] for m in (tiny_model_path, "polite"))
    (comparison,) = summary["comparison"]
    assert comparison["test"] == "mcnemar" and comparison["p_value"] < 0.05, comparison
    assert comparison["better"] == "polite" and tuned > base, summary
    scored = rows(con, "SELECT model, count(*), sum(preference_accuracy) FROM finetune_evaluation(?) GROUP BY model",
                  summary["evaluation_id"])
    assert {m: (n, total) for m, n, total in scored} == {"polite": (12, tuned * 12), tiny_model_path: (12, base * 12)}


def test_preference_accuracy_needs_a_rejected_column_and_changes_nothing(con, tiny_model_path):
    import duckdb_ft

    before = one(con, "SELECT count(*) FROM finetune_evaluations()")
    with pytest.raises(duckdb_ft.InvalidArgument, match="must also return a column rejected"):
        one(con, "SELECT finetune('EVALUATE', ?, 'SELECT ''hi'' AS prompt, ''hello'' AS completion', ?)",
            json.dumps([tiny_model_path]), json.dumps({"metrics": ["preference_accuracy"]}))
    assert one(con, "SELECT count(*) FROM finetune_evaluations()") == before


def test_estimate_reports_pairs_identical_answers_and_length_bias(feedback):
    """ESTIMATE's preference section, from the rows staged as CREATE and ESTIMATE stage them (ESTIMATE itself adds
    a calibration of the training speed, which the other ESTIMATE tests cover)."""
    from duckdb_ft.options import TrainingOptions
    from duckdb_ft.prep import report, stage

    feedback.execute("UPDATE feedback SET discarded = kept WHERE question = 'Where is my order 5?'")
    chosen, rejected = rows(feedback, "SELECT avg(length(kept)), avg(length(discarded)) FROM feedback")[0]
    cur = feedback.cursor()
    st = stage.stage(cur, DPO_QUERY, None, TrainingOptions(method="dpo"))
    found, warnings = report.preference(cur, st, "dpo")
    assert found == {"pairs": 12, "identical_chosen_rejected": 1, "chosen_longer_share": 11 / 12,
                     "mean_chosen_chars": pytest.approx(chosen), "mean_rejected_chars": pytest.approx(rejected)}
    messages = {w["finding"]: w["message"] for w in warnings}
    assert messages["create_fails"] == "1 pairs have chosen equal to rejected"
    assert "the chosen answer is the longer one in 92% of the pairs" in messages["length_bias"]
    st = stage.stage(cur, "SELECT question AS prompt, kept AS completion, thumbs_up AS label FROM feedback", None,
                     TrainingOptions(method="kto"))
    assert report.preference(cur, st, "kto") == ({"desirable_rows": 8, "undesirable_rows": 4, "null_label_rows": 0},
                                                 [])


@pytest.mark.slow  # two jobs trained to their end
def test_reference_model_is_where_dpo_starts_and_what_it_is_compared_with(feedback, tiny_model_path):
    sft = create(feedback, "polite_sft", tiny_model_path, "SELECT question AS prompt, kept AS completion FROM feedback",
                 options={"max_epochs": 1, "batch_size": 4, "learning_rate": 0.01})
    assert wait(feedback, sft) == "SUCCESS"
    job = create(feedback, "polite_dpo", tiny_model_path, DPO_QUERY,
                 options={"method": "dpo", "reference": "polite_sft", "max_epochs": 1, "batch_size": 4,
                          "learning_rate": 0.01})
    assert wait(feedback, job) == "SUCCESS"
    d = describe(feedback, job)
    assert d["parent_model"] == "main.polite_sft@v1"
    losses = [r[0] for r in rows(feedback, "SELECT training_loss FROM finetune_history(?) ORDER BY step", job)]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # the policy starts at the reference: the SFT model
    assert losses[-1] < losses[0]
    with pytest.raises(Exception, match="is a fine-tune of base model"):
        create(feedback, "other", "smollm2-135m", DPO_QUERY, options={"method": "dpo", "reference": "polite_sft"})
