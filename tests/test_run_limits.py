"""Role limits on what a job costs as it runs (issue 30 item 3): MAX_JOB_SECONDS and MAX_TRAINED_TOKENS_PER_DAY
stop a running job, MAX_ROW_EPOCHS bounds what CREATE and SWEEP train, RESUME obeys the limits CREATE obeys. Every
refusal names the limit and leaves nothing behind."""

from __future__ import annotations

import json

import pytest

import duckdb_ft
from duckdb_ft.governance import quotas
from conftest import allow_base_model, catalog_counts, describe, one, refused

Q = "SELECT s AS prompt, s AS completion FROM pub"  # 5 rows
NOTHING = {"jobs": 0, "job_rows": 0, "metrics": 0, "models": 0, "checkpoints": 0}


@pytest.fixture
def limited(limited, tiny_model_path):
    """conftest's ``limited``, with the tiny model registered as a base model every role may use."""
    allow_base_model(limited[0], tiny_model_path)
    return limited


CREATE = "SELECT finetune('CREATE', 'ml.m', 'tiny', ?, ?, ?)"
SWEEP = "SELECT finetune('SWEEP', 'ml.s', 'tiny', ?, NULL, ?)"


def test_rows_times_epochs_bound_create_and_sweep_and_a_refusal_leaves_nothing(limited):
    admin, u1 = limited
    admin.execute("ALTER ROLE public SET MAX_ROW_EPOCHS = 8").fetchall()  # everyone's: 5 rows x 2 epochs is 10
    refused(u1, "MAX_ROW_EPOCHS", CREATE, Q, None, json.dumps({"max_epochs": 2}))
    refused(u1, "MAX_ROW_EPOCHS", SWEEP, Q, json.dumps({"max_epochs": [1, 2]}))  # the first job's 1 is not enough
    admin.execute("ALTER ROLE attacker SET MAX_TRAINING_ROWS = 4").fetchall()
    refused(u1, "MAX_TRAINING_ROWS", SWEEP, Q, json.dumps({"max_epochs": 1, "learning_rate": [1e-4, 2e-4]}))
    assert catalog_counts(admin) == NOTHING
    assert one(admin, "SELECT count(*) FROM duckdb_ft.sweeps") == 0
    assert u1.execute("SELECT * FROM pub").fetchall()  # the session goes on


@pytest.mark.slow  # trains: a job stopped at its first steps, one trained to its end
def test_a_job_past_max_job_seconds_is_cancelled_naming_the_limit_and_the_queue_goes_on(limited):
    admin, u1 = limited
    admin.execute("ALTER ROLE attacker SET MAX_JOB_SECONDS = 0").fetchall()
    job = one(u1, CREATE, Q, None, json.dumps({"max_epochs": 1, "batch_size": 8}))
    mine = one(admin, "SELECT finetune('CREATE', 'ml.mine', 'tiny', ?, NULL, ?)", Q,
               json.dumps({"max_epochs": 1, "batch_size": 8}))  # the administrator has no limits
    assert one(admin, "SELECT finetune('WAIT', ?, 300)", mine) == "SUCCESS"
    assert one(admin, "SELECT finetune('WAIT', ?, 300)", job) == "CANCELLED"
    error = describe(admin, job)["error"]["message"]
    assert "role limit MAX_JOB_SECONDS" in error and "attacker" in error, error
    assert one(admin, "SELECT count(*) FROM duckdb_ft.models WHERE name = 'm'") == 0

    # RESUME queues a job again: the role's queue limit holds there as at CREATE
    admin.execute("UPDATE duckdb_ft.jobs SET status = 'ERROR' WHERE id = ?", [job]).fetchall()
    admin.execute("ALTER ROLE attacker SET MAX_QUEUED_JOBS = 0").fetchall()
    refused(u1, "MAX_QUEUED_JOBS", "SELECT finetune('RESUME', ?)", job)
    assert describe(admin, job)["status"] == "ERROR"


@pytest.mark.slow  # trains for a second or more
def test_a_running_job_stops_once_its_roles_trained_tokens_of_the_day_pass_the_limit(limited):
    admin, u1 = limited
    admin.execute("ALTER ROLE attacker SET MAX_TRAINED_TOKENS_PER_DAY = 60").fetchall()  # none trained yet: SWEEP
    many = "SELECT a.s || b.s || c.s AS prompt, a.s AS completion FROM pub a, pub b, pub c"  # 125 rows
    one(u1, SWEEP, many, json.dumps({"max_epochs": 10, "batch_size": 1, "learning_rate": [1e-4, 2e-4]}))
    jobs = [r[0] for r in admin.execute("SELECT id FROM duckdb_ft.jobs ORDER BY model_name").fetchall()]
    assert [one(admin, "SELECT finetune('WAIT', ?, 300)", j) for j in jobs] == ["CANCELLED", "CANCELLED"]
    for job in jobs:
        error = describe(admin, job)["error"]["message"]
        assert "role limit MAX_TRAINED_TOKENS_PER_DAY" in error and "attacker" in error, error
    steps = admin.execute("SELECT coalesce(step, 0), total_steps FROM duckdb_ft.jobs ORDER BY model_name").fetchall()
    assert 0 < steps[0][0] < steps[0][1], steps  # the first stopped on its way
    assert steps[1][0] == 0, steps  # the second, the day's tokens spent, before its first step
    refused(u1, "MAX_TRAINED_TOKENS_PER_DAY", CREATE, Q, None, json.dumps({"max_epochs": 1}))


def test_every_role_limit_is_in_the_readmes_role_limits_table():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("### Role limits", 1)[1].split("\n#", 1)[0]
    named = set(re.findall(r"^\| (.+?) \|", table, re.M))
    names = {n.strip("` ") for cell in named for n in cell.split(",")}
    assert set(quotas.LIMITS) <= names, set(quotas.LIMITS) - names


def test_a_roles_limit_binds_the_roles_granted_it_and_describe_role_shows_where_each_comes_from(limited):
    admin, u1 = limited
    admin.execute("CREATE ROLE team").fetchall()
    admin.execute("CREATE ROLE other").fetchall()
    admin.execute("GRANT ROLE team TO ROLE attacker").fetchall()  # attacker (u1's role) has team's privileges
    admin.execute("ALTER ROLE team SET MAX_EPOCHS = 1, MAX_JOB_SECONDS = 60").fetchall()
    admin.execute("ALTER ROLE attacker SET MAX_EPOCHS = 2").fetchall()
    admin.execute("ALTER ROLE other SET MAX_SEQ_LENGTH = 16").fetchall()
    refused(u1, "MAX_EPOCHS", CREATE, Q, None, json.dumps({"max_epochs": 2}))  # team's 1, the smaller
    binding = {r[0]: r[1:3] for r in u1.execute("DESCRIBE ROLE attacker").fetchall()}  # value, set_on
    assert binding["MAX_EPOCHS"] == (1, "team") and binding["MAX_JOB_SECONDS"] == (60, "team")
    assert binding["MAX_SEQ_LENGTH"] == (None, None) and set(binding) == set(quotas.LIMITS)
    with pytest.raises(duckdb_ft.NotFound, match="does not exist or is not one of"):
        u1.execute("DESCRIBE ROLE other").fetchall()  # a role u1 does not have: as one that does not exist
    assert {r[0]: r[1] for r in admin.execute("DESC ROLE other").fetchall()}["MAX_SEQ_LENGTH"] == 16
    assert all(r[1] is None for r in admin.execute("DESCRIBE ROLE admin").fetchall())
    assert catalog_counts(admin) == NOTHING
