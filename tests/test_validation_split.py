"""The automatic validation split, visible to users: DESCRIBE counts the rows trained on, validated on, and held
out of the training query; ``validation_fraction`` 0 trains on every row; ESTIMATE warns when the split takes rows
away from a small table and names that option."""

from __future__ import annotations

import json

import pytest

from conftest import create, describe, one, rows, wait

QUERY = "SELECT question AS prompt, answer AS completion FROM faq"
FAST = {"max_epochs": 1, "batch_size": 8}  # the counts are set at CREATE; one short epoch shows the job runs


def estimate(con, base, validation=None, options=None):
    return json.loads(one(con, "SELECT finetune('ESTIMATE', ?, ?, ?, ?)", base, QUERY, validation,
                          json.dumps(options) if options is not None else None))


def warnings(report):
    return {w["finding"]: w for w in report["warnings"]}


def test_describe_counts_the_rows_the_automatic_split_held_out(faq, tiny_model_path):
    con = faq
    job = create(con, "split_bot", tiny_model_path, QUERY, options=FAST)
    d = describe(con, job)
    assert d["held_out_rows"] == d["validation_rows"] >= 1
    assert d["train_rows"] + d["held_out_rows"] == 24
    assert d["validation_data"] == "held-out training rows (validation_fraction 0.1; not trained on)"
    stored = dict(rows(con, "SELECT split, count(*) FROM duckdb_ft.job_rows WHERE job_id = ? GROUP BY split", job))
    assert stored == {"train": d["train_rows"], "validation": d["held_out_rows"]}
    typed = rows(con, "SELECT train_rows, validation_rows, held_out_rows FROM finetune('DESCRIBE', ?)", job)
    assert typed == [(d["train_rows"], d["validation_rows"], d["held_out_rows"])]
    assert wait(con, job) == "SUCCESS"


def test_validation_fraction_zero_trains_on_every_row(faq, tiny_model_path):
    con = faq
    job = create(con, "all_rows", tiny_model_path, QUERY, options={**FAST, "validation_fraction": 0})
    d = describe(con, job)
    assert (d["train_rows"], d["validation_rows"], d["held_out_rows"]) == (24, 0, 0)
    assert d["validation_data"] == "training rows (validation_fraction 0: every row trains)"
    assert rows(con, "SELECT DISTINCT split FROM duckdb_ft.job_rows WHERE job_id = ?", job) == [("train",)]
    assert wait(con, job) == "SUCCESS"
    done = describe(con, job)
    assert done["training_result"]["validation_loss"] > 0  # measured on the training rows
    assert done["held_out_rows"] == 0


def test_a_validation_query_holds_no_training_row_out(faq, tiny_model_path):
    con = faq
    job = create(con, "val_query", tiny_model_path, QUERY + " WHERE n < 20",
                 QUERY + " WHERE n >= 20", options=FAST)
    d = describe(con, job)
    assert (d["train_rows"], d["validation_rows"], d["held_out_rows"]) == (20, 4, 0)
    assert wait(con, job) == "SUCCESS"


def test_estimate_warns_when_the_split_takes_rows_from_a_small_table(faq, tiny_model_path):
    con = faq
    r = estimate(con, tiny_model_path)
    held = r["rows"]["kept"]["validation"]
    assert held >= 1 and r["rows"]["kept"]["train"] + held == 24
    w = warnings(r)["held_out_rows"]
    assert w["message"].startswith(f"{held} of your 24 rows") and "not trained on" in w["message"]
    assert '{"validation_fraction": 0}' in w["fix"]

    every = estimate(con, tiny_model_path, options={"validation_fraction": 0})
    assert every["rows"]["kept"] == {"train": 24, "validation": 0}
    assert every["rows"]["validation_source"] == "training rows (validation_fraction 0: every row trains)"
    assert "held_out_rows" not in warnings(every)
    assert "validation_fraction 0" in warnings(every)["no_validation"]["message"]

    queried = estimate(con, tiny_model_path, QUERY + " WHERE n >= 20")
    assert "held_out_rows" not in warnings(queried)


@pytest.mark.parametrize("value", [-0.1, 0.6, "none"])
def test_a_bad_validation_fraction_is_refused_with_its_range(faq, tiny_model_path, value):
    import duckdb

    with pytest.raises(duckdb.Error, match=r"validation_fraction.*\[0\.0, 0\.5\]|validation_fraction.*number"):
        create(faq, "bad_split", tiny_model_path, QUERY, options={"validation_fraction": value})
    assert one(faq, "SELECT count(*) FROM duckdb_ft.jobs") == 0


def test_with_every_row_training_the_loss_is_measured_on_an_even_sample_of_them():
    """No held-out rows: the validation loss reads every 10th training row (at least 64; a small set whole), the
    same rows at each evaluation, instead of every training row again in float32 at each epoch's end."""
    from duckdb_ft.ml.data import loss_sample

    assert loss_sample(list(range(40))) == list(range(40))
    assert loss_sample(list(range(300))) == list(range(0, 300, 4))  # 75 rows: at least 64
    big = loss_sample(list(range(5000)))
    assert big == list(range(0, 5000, 10)) and len(big) == 500
