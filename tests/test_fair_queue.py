"""The job queue takes roles in turns (issue 30 item 3): one role's SWEEP does not hold another role's job."""

from __future__ import annotations

import json
from collections import deque

import pytest

import duckdb_ft
from duckdb_ft.jobs import fair
from conftest import ONE_EPOCH, allow_base_model, setup_attack_db, user_connection


def started_order(queue, owners, arrivals=()):
    """The order jobs start in: ``arrivals`` (after how many starts, which job joins) as a worker meets them."""
    served, order, queue = {}, [], deque(queue)
    arrivals = dict(arrivals)
    while queue or arrivals:
        for job in arrivals.pop(len(order), []):
            queue.append(job)
        if queue:
            order.append(fair.take(queue, owners.get, served))
    return order


def test_a_single_job_of_another_role_starts_before_a_sweeps_third_job():
    sweep = [f"a{i}" for i in range(1, 17)]  # role a's 16-job SWEEP, queued first
    owners = {**{j: "a" for j in sweep}, "b1": "b"}
    for arrivals in ({0: ["b1"]}, {1: ["b1"]}):  # b's job queued before the first start, or while a1 runs
        order = started_order(sweep, owners, arrivals)
        assert order.index("b1") < order.index("a3"), order
        assert order[:3] == ["a1", "b1", "a2"] and sorted(order) == sorted(sweep + ["b1"])


def test_a_role_alone_runs_its_jobs_in_order_and_roles_alternate():
    owners = {"a1": "a", "a2": "a", "b1": "b", "b2": "b", "c1": "c"}
    assert started_order(["a1", "a2"], owners) == ["a1", "a2"]
    assert started_order(["a1", "a2", "b1", "b2", "c1"], owners) == ["a1", "b1", "c1", "a2", "b2"]


@pytest.mark.slow
def test_the_administrators_job_starts_before_the_third_job_of_a_users_16_job_sweep(tiny_model_path):
    admin = duckdb_ft.connect()
    setup_attack_db(admin)
    allow_base_model(admin, tiny_model_path)
    u1 = user_connection(admin, "u1")
    q = "SELECT s AS prompt, s AS completion FROM pub"
    try:
        sweep = u1.execute("SELECT finetune('SWEEP', 'ml.hog', ?, ?, NULL, ?)", [tiny_model_path, q, json.dumps(
            {"max_epochs": 1, "batch_size": 8, "learning_rate": [1e-4 * (i + 1) for i in range(16)]})]).fetchall()[0][0]
        job = admin.execute("SELECT finetune('CREATE', 'ml.mine', ?, ?, NULL, ?)",
                            [tiny_model_path, q, ONE_EPOCH]).fetchall()[0][0]
        assert duckdb_ft.wait(admin, job, 300) == "SUCCESS"
        started = admin.execute("SELECT model_name, started_on FROM duckdb_ft.jobs WHERE started_on IS NOT NULL "
                                "ORDER BY started_on").fetchall()
        order = [name for name, _ in started]
        # hog_1 and hog_2 may both have started before 'mine' was created (a tiny job ends in moments): the fair
        # queue's promise is that no third job of the sweep starts before it.
        assert "mine" in order[:3] and "hog_3" not in order[:order.index("mine")], order
    finally:
        u1.execute("SELECT finetune('CANCEL', ?)", [sweep]).fetchall()
        u1.close()
        admin.close()
