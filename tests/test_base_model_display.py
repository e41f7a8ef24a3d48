"""A registered base model's folder is the administrator's: a user sees its registered name (issue 30).

A job and its model record the registered folder (or hub id) as ``base_model``, which the worker loads; every place
a user session reads it (FINETUNE's SHOW and DESCRIBE, SHOW MODELS, DESCRIBE MODEL, SHOW VERSIONS, EVALUATE's
retention summary, the errors of continuing a model) shows the registered name instead.
"""

from __future__ import annotations

import json

import pytest

import duckdb_ft
from duckdb_ft.errors import InvalidArgument
from duckdb_ft.evaluation import retention
from conftest import ONE_EPOCH, setup_attack_db, user_connection


@pytest.fixture(scope="module")
def trained(tiny_model_path):
    admin = duckdb_ft.connect()
    setup_attack_db(admin)
    admin.execute(f"CREATE BASE MODEL tiny FROM '{tiny_model_path}'").fetchall()
    admin.execute("GRANT USAGE ON BASE MODEL tiny TO ROLE attacker").fetchall()
    u1 = user_connection(admin, "u1")
    job = u1.execute("SELECT finetune('CREATE', 'ml.bot', 'tiny', 'SELECT s AS prompt, s AS completion FROM pub', "
                     "NULL, ?)", [ONE_EPOCH]).fetchall()[0][0]
    assert duckdb_ft.wait(admin, job) == "SUCCESS"
    yield admin, u1, job, tiny_model_path
    u1.close()
    admin.close()


def user_views(u1, job):
    """Everything a user session reads a base model in, as text."""
    return {
        "DESCRIBE": json.loads(u1.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchall()[0][0])["base_model"],
        "SHOW": [j["base_model"] for j in json.loads(u1.execute("SELECT finetune('SHOW')").fetchall()[0][0])],
        "SHOW MODELS": [r[4] for r in u1.execute("SHOW MODELS").fetchall()],
        "DESCRIBE MODEL": dict(zip([d[0] for d in u1.execute("DESCRIBE MODEL ml.bot").description],
                                   u1.execute("DESCRIBE MODEL ml.bot").fetchall()[0]))["base_model"],
        "SHOW VERSIONS": [r[8] for r in u1.execute("SHOW VERSIONS IN MODEL ml.bot").fetchall()],
    }


def test_a_user_sees_the_registered_name_of_its_base_model_never_the_folder(trained):
    admin, u1, job, path = trained
    seen = user_views(u1, job)
    assert seen == {"DESCRIBE": "tiny", "SHOW": ["tiny"], "SHOW MODELS": ["tiny"], "DESCRIBE MODEL": "tiny",
                    "SHOW VERSIONS": ["tiny"]}
    assert path not in json.dumps(seen)


def test_the_administrator_still_sees_the_recorded_folder(trained):
    admin, u1, job, path = trained
    assert json.loads(admin.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchall()[0][0])["base_model"] == path
    assert [r[4] for r in admin.execute("SHOW MODELS").fetchall()] == [path]


def test_a_base_model_no_longer_registered_shows_no_folder_to_a_user(trained):
    admin, u1, job, path = trained
    admin.execute("DROP BASE MODEL tiny").fetchall()
    try:
        seen = user_views(u1, job)
        assert path not in json.dumps(seen)
        assert seen["DESCRIBE MODEL"] == seen["DESCRIBE"] == "<unregistered base model>"
    finally:
        admin.execute(f"CREATE BASE MODEL tiny FROM '{path}'").fetchall()
        admin.execute("GRANT USAGE ON BASE MODEL tiny TO ROLE attacker").fetchall()


def test_continuing_a_model_with_another_lora_shape_names_the_registered_base_model(trained):
    admin, u1, job, path = trained
    with pytest.raises(InvalidArgument, match="from its base model 'tiny'") as e:
        u1.execute("SELECT finetune('CREATE', 'ml.bot2', 'ml.bot', 'SELECT s AS prompt, s AS completion FROM pub', "
                   "NULL, ?)", [json.dumps({"max_epochs": 1, "lora_r": 2})]).fetchall()
    assert path not in str(e.value)


def test_evaluates_retention_summary_names_the_registered_base_model(trained, monkeypatch):
    admin, u1, job, path = trained
    monkeypatch.setattr(retention, "measure", lambda *a, **k: {"prompts": 0})  # the figures are not the point
    out = json.loads(u1.execute("SELECT finetune('EVALUATE', 'ml.bot', 'SELECT s AS prompt, s AS completion FROM pub', "
                                "?)", [json.dumps({"max_tokens": 2, "metrics": ["exact_match"],
                                                   "retention": True})]).fetchall()[0][0])
    assert out["retention"]["ml.bot"]["base_model"] == "tiny"
    described = u1.execute("SELECT finetune('DESCRIBE EVALUATION', ?)", [out["evaluation_id"]]).fetchall()[0][0]
    assert path not in described
