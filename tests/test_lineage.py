"""Continue training and lineage (issue 16): a job whose base is a fine-tuned model starts from its adapter (same
base weights, same LoRA shape; shape-changing options are an error; USAGE on the parent needed), records its
parent; every model records its job, parent, base model and base weights' hash, queries, snapshot rows and hash,
options and final metrics, shown by DESCRIBE MODEL; two trainings on the same snapshot with the same seed are
identified as such."""

from __future__ import annotations

import json

import pytest

import duckdb_ft
from conftest import LEARN, catalog_counts, create, one, rows, wait


def model_row(con, name):
    rel = con.execute(f"DESCRIBE MODEL {name}")
    cols = [d[0] for d in rel.description]
    return dict(zip(cols, rel.fetchall()[0]))


def answer(con, model, prompt):
    return one(con, "SELECT complete(?, ?, '{\"max_tokens\": 6, \"temperature\": 0}')::JSON "
                    "->> '$.choices[0].messages'", model, prompt)


@pytest.fixture
def facts(con):
    con.execute("CREATE TABLE facts AS SELECT 'Fact A number ' || i AS p, 'alpha alpha alpha' AS c, 'A' AS kind "
                "FROM range(16) t(i) UNION ALL "
                "SELECT 'Tell B item ' || i, 'beta beta beta', 'B' FROM range(16) t(i)")
    return con


@pytest.mark.slow
def test_continued_model_starts_from_its_parents_adapter_and_learns_the_new_rows(facts, tiny_model_path):
    con = facts
    job = create(con, "bot", tiny_model_path, "SELECT p AS prompt, c AS completion FROM facts WHERE kind = 'A'",
                 options=LEARN)
    assert wait(con, job) == "SUCCESS"
    assert "alpha" in answer(con, "bot", "Fact A number 3")

    # Shape-changing options are an error that says so, and create nothing.
    before = catalog_counts(con)
    with pytest.raises(duckdb_ft.InvalidArgument, match=r"keeps its LoRA shape.*lora_r 4 \(the parent's: 16\)"):
        create(con, "bot_v2", "bot", "SELECT p AS prompt, c AS completion FROM facts WHERE kind = 'B'",
               options={**LEARN, "lora_r": 4})
    with pytest.raises(duckdb_ft.InvalidArgument, match="target_modules"):
        create(con, "bot_v2", "bot", "SELECT p AS prompt, c AS completion FROM facts WHERE kind = 'B'",
               options={**LEARN, "target_modules": ["q_proj"]})
    assert catalog_counts(con) == before

    # The same shape spelled out is fine. A continuation starts from bot's adapter: with a learning rate too small
    # to move it, it answers exactly as bot does, where the same job from the base model knows nothing of A.
    still = {**LEARN, "max_epochs": 1, "learning_rate": 1e-7}
    job_still = create(con, "bot_still", "bot", "SELECT p AS prompt, c AS completion FROM facts WHERE kind = 'B'",
                       options=still)
    fresh = create(con, "b_fresh", tiny_model_path, "SELECT p AS prompt, c AS completion FROM facts "
                   "WHERE kind = 'B'", options=still)
    # And it learns the new rows: trained on B only, bot_v2 answers B.
    job2 = create(con, "bot_v2", "bot", "SELECT p AS prompt, c AS completion FROM facts WHERE kind = 'B'",
                  options={**LEARN, "max_epochs": 3})
    assert all(wait(con, j) == "SUCCESS" for j in (job_still, fresh, job2))
    for p in ("Fact A number 3", "Fact A number 12", "Tell B item 5"):
        assert answer(con, "bot_still", p) == answer(con, "bot", p)
        assert "alpha" not in answer(con, "b_fresh", p)
    assert "beta" in answer(con, "bot_v2", "Tell B item 5") and "beta" in answer(con, "bot_v2", "Tell B item 14")

    v2 = model_row(con, "bot_v2")
    assert v2["parent_model"] == "main.bot@v1" and v2["parent_job_id"] == job
    assert v2["base_model"] == tiny_model_path  # the parent's base weights
    assert json.loads(v2["lora_config"])["r"] == 16
    assert rows(con, "SELECT parent_model FROM duckdb_ft.jobs WHERE id = ?", job2) == [("main.bot@v1",)]
    assert model_row(con, "bot")["parent_model"] is None


@pytest.mark.slow
def test_continuing_needs_usage_on_the_parent(tmp_path, tiny_model_path):
    db = str(tmp_path / "roles.duckdb")
    admin = duckdb_ft.connect(db)
    admin.execute("CREATE TABLE facts AS SELECT 'Fact ' || i AS p, 'alpha' AS c FROM range(16) t(i)")
    job = create(admin, "bot", tiny_model_path, "SELECT p AS prompt, c AS completion FROM facts",
                 options={"max_epochs": 1, "batch_size": 8})
    assert wait(admin, job) == "SUCCESS"
    for stmt in ("CREATE ROLE trainer", "GRANT CREATE MODEL, USAGE ON SCHEMA main TO ROLE trainer",
                 "GRANT SELECT ON TABLE facts TO ROLE trainer", "GRANT ROLE trainer TO USER tess"):
        admin.execute(stmt).fetchall()
    tess = duckdb_ft.connect(db, user="tess")
    try:
        with pytest.raises(duckdb_ft.PermissionDenied, match="USAGE is required to continue training"):
            create(tess, "bot_v2", "bot", "SELECT p AS prompt, c AS completion FROM facts")
        assert one(admin, "SELECT count(*) FROM duckdb_ft.jobs") == 1
        admin.execute("GRANT USAGE ON MODEL bot TO ROLE trainer").fetchall()
        job2 = create(tess, "bot_v2", "bot", "SELECT p AS prompt, c AS completion FROM facts",
                      options={"max_epochs": 1, "batch_size": 8})
        assert wait(admin, job2) == "SUCCESS"
        assert model_row(admin, "bot_v2")["parent_model"] == "main.bot@v1"
    finally:
        tess.close()
        admin.close()


@pytest.mark.slow
def test_lineage_identifies_two_trainings_on_the_same_snapshot(faq, tiny_model_path):
    con = faq
    opts = {"max_epochs": 1, "batch_size": 8, "seed": 7}
    query = "SELECT question AS prompt, answer AS completion FROM faq"
    jobs = [create(con, "m1", tiny_model_path, query, options=opts),
            create(con, "m2", tiny_model_path, "SELECT answer AS completion, question AS prompt FROM faq ORDER BY n",
                   options=opts),
            create(con, "m3", tiny_model_path, query + " WHERE n < 20", options=opts),
            create(con, "m4", tiny_model_path, query, options={**opts, "seed": 8})]
    assert all(wait(con, j) == "SUCCESS" for j in jobs)
    m1, m2, m3, m4 = (model_row(con, m) for m in ("m1", "m2", "m3", "m4"))

    assert m1["job_id"] == jobs[0] and m1["base_model"] == tiny_model_path and m1["parent_model"] is None
    assert len(m1["base_weights_hash"]) == 64 and m1["base_weights_hash"] == m3["base_weights_hash"]
    assert m1["training_query"] == query and m1["validation_query"] is None
    assert m1["snapshot_rows"] == 24 and len(m1["snapshot_hash"]) == 64
    metrics = json.loads(m1["metrics"])
    assert metrics["steps"] >= 1 and metrics["training_loss"] == pytest.approx(m1["training_loss"])
    assert json.loads(m1["options"])["seed"] == 7
    assert len(m1["adapter_hash"]) == 64

    # m1 and m2: the same rows in the same order from another query, the same options: the same training.
    assert (m2["snapshot_hash"], m2["options"]) == (m1["snapshot_hash"], m1["options"])
    assert m2["training_query"] != m1["training_query"]
    # m3: other rows; m4: the same rows, another seed.
    assert m3["snapshot_hash"] != m1["snapshot_hash"] and m3["snapshot_rows"] < 24
    assert m4["snapshot_hash"] == m1["snapshot_hash"] and m4["options"] != m1["options"]


@pytest.mark.slow
def test_a_sweep_over_a_fine_tuned_model_continues_it_in_every_job(faq, tiny_model_path):
    con = faq
    query = "SELECT question AS prompt, answer AS completion FROM faq"
    job = create(con, "bot", tiny_model_path, query, options={"max_epochs": 1, "batch_size": 8, "lora_r": 4})
    assert wait(con, job) == "SUCCESS"
    before = catalog_counts(con)
    with pytest.raises(duckdb_ft.InvalidArgument, match="keeps its LoRA shape"):
        one(con, "SELECT finetune('SWEEP', 'more', 'bot', ?, NULL, ?)", query,
            json.dumps({"max_epochs": 1, "lora_r": [4, 8]}))
    assert catalog_counts(con) == before
    sweep_id = one(con, "SELECT finetune('SWEEP', 'more', 'bot', ?, NULL, ?)", query,
                   json.dumps({"max_epochs": 1, "batch_size": 8, "learning_rate": [1e-3, 2e-3]}))
    jobs = rows(con, "SELECT id, parent_model, options FROM duckdb_ft.jobs WHERE sweep_id = ?", sweep_id)
    assert len(jobs) == 2 and {j[1] for j in jobs} == {"main.bot@v1"}
    assert {json.loads(j[2])["lora_r"] for j in jobs} == {4}
    assert all(wait(con, j[0]) == "SUCCESS" for j in jobs)
