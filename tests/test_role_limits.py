"""Per-role limits (issue 30 item 3): set by the administrator with SQL, each refusal naming its limit, before
anything is created or generated."""

from __future__ import annotations

import json

import pytest

from duckdb_ft.errors import InvalidArgument, PermissionDenied
from conftest import allow_base_model, refused

Q = "SELECT s AS prompt, s AS completion FROM pub"


def test_only_the_administrator_sets_limits_and_a_role_sees_its_own(limited):
    admin, u1 = limited
    with pytest.raises(PermissionDenied, match="administrator only"):
        u1.execute("ALTER ROLE attacker SET MAX_QUEUED_JOBS = 100").fetchall()
    with pytest.raises(InvalidArgument, match="unknown role limit MAX_GPUS"):
        admin.execute("ALTER ROLE attacker SET MAX_GPUS = 1").fetchall()
    admin.execute("ALTER ROLE attacker SET MAX_QUEUED_JOBS = 3, MAX_EPOCHS = 2").fetchall()
    admin.execute("ALTER ROLE public SET MAX_SWEEP_JOBS = 4").fetchall()
    admin.execute("CREATE ROLE other").fetchall()
    admin.execute("ALTER ROLE other SET MAX_EPOCHS = 9").fetchall()
    assert sorted(u1.execute("SHOW LIMITS").fetchall()) == [
        ("attacker", "MAX_EPOCHS", 2), ("attacker", "MAX_QUEUED_JOBS", 3), ("public", "MAX_SWEEP_JOBS", 4)]
    admin.execute("ALTER ROLE attacker UNSET MAX_EPOCHS").fetchall()
    assert len(admin.execute("SHOW LIMITS").fetchall()) == 3


def test_a_jobs_options_and_the_queue_are_bounded_before_anything_is_created(limited):
    admin, u1 = limited
    create = "SELECT finetune('CREATE', 'ml.big', 'smollm2-135m', ?, NULL, ?)"
    admin.execute("ALTER ROLE attacker SET MAX_EPOCHS = 1, MAX_SEQ_LENGTH = 128, MAX_BATCH_SIZE = 8").fetchall()
    refused(u1, "MAX_EPOCHS", create, Q, json.dumps({"max_epochs": 3}))
    refused(u1, "MAX_SEQ_LENGTH", create, Q, json.dumps({"max_epochs": 1, "max_seq_length": 512}))
    refused(u1, "MAX_BATCH_SIZE", create, Q, json.dumps({"max_epochs": 1, "max_seq_length": 128, "batch_size": 4,
                                                         "gradient_accumulation_steps": 4}))
    refused(u1, "MAX_EPOCHS", "SELECT finetune('ESTIMATE', 'smollm2-135m', ?)", Q)  # the default 3 epochs
    admin.execute("ALTER ROLE public SET MAX_QUEUED_JOBS = 0, MAX_SWEEP_JOBS = 2").fetchall()  # everyone's
    ok = json.dumps({"max_epochs": 1, "max_seq_length": 128})
    refused(u1, "MAX_QUEUED_JOBS", create, Q, ok)
    refused(u1, "MAX_SWEEP_JOBS", "SELECT finetune('SWEEP', 'ml.big', 'smollm2-135m', ?, NULL, ?)", Q,
            json.dumps({"max_epochs": 1, "max_seq_length": 128, "learning_rate": [1e-4, 2e-4, 3e-4]}))
    refused(u1, "MAX_EPOCHS", "SELECT finetune('SWEEP', 'ml.big', 'smollm2-135m', ?, NULL, ?)", Q,
            json.dumps({"max_seq_length": 128, "max_epochs": [1, 2]}))
    admin.execute("ALTER ROLE public SET MAX_TRAINED_TOKENS_PER_DAY = 0").fetchall()
    admin.execute("ALTER ROLE public UNSET MAX_QUEUED_JOBS").fetchall()
    refused(u1, "MAX_TRAINED_TOKENS_PER_DAY", create, Q, ok)
    assert admin.execute("SELECT count(*) FROM duckdb_ft.jobs").fetchall() == [(0,)]


def test_complete_is_bounded_per_row_and_per_day(limited, tiny_model_path):
    admin, u1 = limited
    allow_base_model(admin, tiny_model_path)
    admin.execute("ALTER ROLE attacker SET MAX_COMPLETE_TOKENS = 8").fetchall()
    refused(u1, "MAX_COMPLETE_TOKENS", "SELECT complete('tiny', 'hi')")  # COMPLETE's default is 512
    refused(u1, "MAX_COMPLETE_TOKENS", "SELECT complete('tiny', 'hi', '{\"max_tokens\": 64}')")
    assert u1.execute("SELECT try_complete('tiny', 'hi', '{\"max_tokens\": 64}')").fetchall() == [(None,)]
    assert u1.execute("SELECT complete('tiny', 'hi', '{\"max_tokens\": 4}')").fetchall()[0][0] is not None
    admin.execute("ALTER ROLE attacker SET MAX_COMPLETE_TOKENS_PER_DAY = 1").fetchall()
    refused(u1, "MAX_COMPLETE_TOKENS_PER_DAY", "SELECT complete('tiny', 'hi', '{\"max_tokens\": 4}')")
    assert admin.execute("SELECT complete('tiny', 'hi', '{\"max_tokens\": 64}')").fetchall()[0][0] is not None


def test_training_rows_and_evaluations_are_bounded_too(limited, tiny_model_path):
    admin, u1 = limited
    allow_base_model(admin, tiny_model_path)
    admin.execute("ALTER ROLE attacker SET MAX_TRAINING_ROWS = 3, MAX_COMPLETE_TOKENS = 8").fetchall()
    refused(u1, "MAX_TRAINING_ROWS", "SELECT finetune('CREATE', 'ml.big', 'tiny', ?, NULL, ?)", Q,
            json.dumps({"max_epochs": 1}))  # pub has 5 rows
    assert admin.execute("SELECT count(*) FROM duckdb_ft.jobs").fetchall() == [(0,)]
    assert admin.execute("SELECT count(*) FROM duckdb_ft.job_rows").fetchall() == [(0,)]
    refused(u1, "MAX_COMPLETE_TOKENS", "SELECT finetune('EVALUATE', 'tiny', ?, ?)", Q,
            json.dumps({"max_tokens": 64, "metrics": ["exact_match"]}))
    refused(u1, "MAX_COMPLETE_TOKENS", "SELECT finetune('EVALUATE', 'tiny', ?, ?)", Q,
            json.dumps({"metrics": ["exact_match"]}))  # EVALUATE's default max_tokens
