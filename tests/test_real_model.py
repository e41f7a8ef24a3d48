"""The real default model (SmolLM2-135M-Instruct) through SQL."""

from __future__ import annotations

import pytest

import duckdb_ft

pytestmark = [pytest.mark.real_model, pytest.mark.slow]


def test_capital_of_france_through_connect(default_model_path):
    con = duckdb_ft.connect()
    [(answer,)] = con.sql("SELECT complete('smollm2-135m', 'What is the capital of France?')").fetchall()
    assert "Paris" in answer
    con.close()


def test_finetune_real_model_overfits_a_handful_of_pairs(tmp_path, default_model_path):
    """SmolLM2-135M learns made-up facts: the loss falls and COMPLETE answers with the trained completion. Two
    facts, so that each of the five steps is two rows of the real model (the suite's costliest training; each
    epoch of one step also evaluates and checkpoints). Measured: the last loss about 1/60 of the first."""
    import json

    con = duckdb_ft.connect(str(tmp_path / "real.duckdb"))
    con.execute("""CREATE TABLE facts AS SELECT * FROM (VALUES
        ('What is the codename of project Alpha?', 'The codename of project Alpha is BLUE HERON.'),
        ('What is the codename of project Gamma?', 'The codename of project Gamma is SILENT OWL.')) t(q, a)""")
    options = {"max_epochs": 5, "learning_rate": 5e-3, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
               "batch_size": 4, "warmup_ratio": 0.0}
    job = con.execute("SELECT finetune('CREATE', 'codenames', 'smollm2-135m', "
                      "'SELECT q AS prompt, a AS completion FROM facts', NULL, ?)", [json.dumps(options)]).fetchall()[0][0]
    assert duckdb_ft.wait(con, job, timeout=600) == "SUCCESS"
    d = json.loads(con.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchall()[0][0])
    losses = [r[0] for r in con.execute("SELECT training_loss FROM finetune_history(?)", [job]).fetchall()]
    assert d["progress"] == 1.0 and d["training_result"]["validation_loss"] is not None
    assert losses[-1] < losses[0] / 4, losses
    [(answer, base)] = con.execute(
        "SELECT complete('codenames', 'What is the codename of project Gamma?', '{\"max_tokens\": 24}')::JSON "
        "->> '$.choices[0].messages', complete('smollm2-135m', 'What is the codename of project Gamma?', "
        "'{\"max_tokens\": 24}')::JSON ->> '$.choices[0].messages'").fetchall()
    assert "SILENT OWL" in answer, answer
    assert "SILENT OWL" not in base
    con.close()
