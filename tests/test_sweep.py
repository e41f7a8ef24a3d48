"""FINETUNE('SWEEP'): one call makes one job per combination over one snapshot of the rows, ranked by
``finetune_sweep``; a bad value in any combination creates nothing; CANCEL of the sweep cancels every job."""

from __future__ import annotations

import json

import duckdb
import pytest

from conftest import catalog_counts, describe, one, rows, wait

QUERY = "SELECT question AS prompt, answer AS completion FROM faq"
GRID = {"max_epochs": 1, "batch_size": 4, "learning_rate": [1e-3, 2e-2], "lora_r": [4, 8]}


def sweep(con, name, base, options, validation=None):
    return one(con, "SELECT finetune('SWEEP', ?, ?, ?, ?, ?)", name, base, QUERY, validation, json.dumps(options))


@pytest.mark.slow
def test_a_2x2_sweep_runs_four_jobs_over_one_snapshot_and_ranks_them(faq, tiny_model_path):
    con = faq
    sweep_id = sweep(con, "faq_bot", tiny_model_path, GRID)
    assert sweep_id.startswith("sw_")
    jobs = rows(con, "SELECT id, model_name, options, snapshot_of FROM duckdb_ft.jobs WHERE sweep_id = ? "
                     "ORDER BY created_on, model_name", sweep_id)
    assert [j[1] for j in jobs] == ["faq_bot_1", "faq_bot_2", "faq_bot_3", "faq_bot_4"]
    tried = {(json.loads(j[2])["learning_rate"], json.loads(j[2])["lora_r"]) for j in jobs}
    assert tried == {(1e-3, 4), (1e-3, 8), (2e-2, 4), (2e-2, 8)}
    first = jobs[0][0]
    assert [j[3] for j in jobs] == [None, first, first, first]
    # one snapshot: only the first job's rows are stored
    assert one(con, "SELECT count(DISTINCT job_id) FROM duckdb_ft.job_rows") == 1
    for job_id, *_ in jobs:
        assert wait(con, job_id) == "SUCCESS"
    d = [describe(con, j[0]) for j in jobs]
    assert len({x["train_rows"] for x in d}) == 1 and len({x["trained_tokens"] for x in d}) == 1
    ranking = rows(con, "SELECT rank, model, status, validation_loss, swept ->> '$.lora_r' FROM finetune_sweep(?) "
                        "ORDER BY rank", sweep_id)
    assert [r[0] for r in ranking] == [1, 2, 3, 4] and {r[2] for r in ranking} == {"SUCCESS"}
    losses = [r[3] for r in ranking]
    assert losses == sorted(losses)
    assert {r[1] for r in ranking} == {f"main.faq_bot_{k}" for k in range(1, 5)}
    winner = ranking[0][1]
    assert one(con, "SELECT complete(?, 'What is code number 3?', '{\"max_tokens\": 3}') IS NOT NULL", winner)


def test_a_bad_value_in_one_combination_creates_nothing(faq, tiny_model_path):
    con = faq
    before = catalog_counts(con)
    with pytest.raises(duckdb.Error, match=r"invalid SWEEP combination.*lora_r.*must be an integer"):
        sweep(con, "bad", tiny_model_path, {**GRID, "lora_r": [8, 0]})
    with pytest.raises(duckdb.Error, match="needs at least one option given as a list"):
        sweep(con, "bad", tiny_model_path, {"max_epochs": 1})
    with pytest.raises(duckdb.Error, match="dedupe|validation_fraction.*shape the rows"):
        sweep(con, "bad", tiny_model_path, {**GRID, "validation_fraction": [0.1, 0.2]})
    with pytest.raises(duckdb.Error, match="training query"):
        one(con, "SELECT finetune('SWEEP', 'bad', ?, 'DROP TABLE faq', NULL, ?)", tiny_model_path, json.dumps(GRID))
    assert catalog_counts(con) == before
    assert one(con, "SELECT count(*) FROM duckdb_ft.sweeps") == 0


def test_cancel_of_a_sweep_cancels_every_job(faq, tiny_model_path):
    con = faq
    sweep_id = sweep(con, "slow", tiny_model_path, {"max_epochs": 10, "batch_size": 1, "lora_r": [4, 8, 16]})
    assert one(con, "SELECT finetune('CANCEL', ?)", sweep_id) == f"Canceled 3 job(s) of sweep {sweep_id}"
    for job_id, in rows(con, "SELECT id FROM duckdb_ft.jobs WHERE sweep_id = ?", sweep_id):
        wait(con, job_id)
    statuses = [r[0] for r in rows(con, "SELECT status FROM finetune_sweep(?)", sweep_id)]
    assert statuses == ["CANCELLED"] * 3
    with pytest.raises(duckdb.Error, match="sweep 'sw_nope' does not exist"):
        rows(con, "FROM finetune_sweep('sw_nope')")


@pytest.mark.slow
def test_a_sweep_with_eval_query_ranks_by_that_metric_once_every_job_has_finished(faq, tiny_model_path):
    con = faq
    options = {**GRID, "lora_r": [4], "eval_query": "SELECT question AS prompt, answer AS completion FROM faq "
               "WHERE n < 6", "eval_metric": "completion_loss"}
    sweep_id = sweep(con, "ranked", tiny_model_path, options)
    for job_id, in rows(con, "SELECT id FROM duckdb_ft.jobs WHERE sweep_id = ?", sweep_id):
        assert wait(con, job_id) == "SUCCESS"
    ranking = rows(con, "SELECT rank, model, eval_metric, eval_score FROM finetune_sweep(?) ORDER BY rank", sweep_id)
    assert [r[2] for r in ranking] == ["completion_loss"] * 2
    scores = [r[3] for r in ranking]
    assert scores == sorted(scores) and None not in scores  # lower loss first
    # the scores are EVALUATE's own, stored once: a second read runs no new evaluation
    summary = json.loads(one(con, "SELECT finetune('EVALUATE', ?, ?, '{\"metrics\": [\"completion_loss\"]}')",
                             json.dumps([r[1] for r in ranking]), options["eval_query"]))
    assert [summary["models"][r[1]]["completion_loss"] for r in ranking] == pytest.approx(scores)
    evaluations = one(con, "SELECT count(*) FROM duckdb_ft.evaluations")
    rows(con, "FROM finetune_sweep(?)", sweep_id)
    assert one(con, "SELECT count(*) FROM duckdb_ft.evaluations") == evaluations


def test_bad_eval_options_fail_the_sweep_before_any_job(faq, tiny_model_path):
    con = faq
    before = catalog_counts(con)
    for bad, message in [({"eval_metric": "accuracy", "eval_query": "SELECT question AS prompt, answer AS "
                           "completion FROM faq"}, "unknown metric 'accuracy'"),
                         ({"eval_metric": "exact_match"}, "eval_query and eval_metric go together"),
                         ({"eval_metric": "exact_match", "eval_query": "SELECT question FROM faq"},
                          "eval_query must return columns prompt and completion")]:
        with pytest.raises(duckdb.Error, match=message):
            sweep(con, "bad", tiny_model_path, {**GRID, **bad})
    assert catalog_counts(con) == before
