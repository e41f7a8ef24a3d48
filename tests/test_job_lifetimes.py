"""Jobs outlive nothing silently: a script that ends waits for its job; a killed job is found and resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import duckdb_ft

CHILD = textwrap.dedent("""
    import json, sys, time
    import duckdb_ft
    import duckdb_ft.jobs.worker
    path, base, mode = sys.argv[1:4]
    # progress reaches the catalog at every step, so the poll sees a mid-epoch step on any machine (at the default
    # one-second flush, an epoch shorter than a second only ever shows the step its checkpoint saved)
    duckdb_ft.jobs.worker.FLUSH_SECONDS = 0.0
    con = duckdb_ft.connect(path)
    con.execute("CREATE TABLE big AS SELECT 'prompt ' || i AS p, 'completion ' || i AS c FROM range(80) t(i)")
    options = json.dumps({"max_epochs": 3, "batch_size": 1} if mode == "poll" else {"max_epochs": 1})
    job = con.execute("SELECT finetune('CREATE', 'lifetime', ?, 'SELECT p AS prompt, c AS completion FROM big', "
                      "NULL, ?)", [base, options]).fetchall()[0][0]
    print("JOB", job, flush=True)
    if mode == "exit":
        sys.exit(0)  # no wait: the interpreter must wait for the job at exit
    while True:
        step, status = con.execute("SELECT step, status FROM finetune('DESCRIBE', ?)", [job]).fetchall()[0]
        saved = con.execute("SELECT coalesce(max(step), 0) FROM duckdb_ft.checkpoints").fetchall()[0][0]
        print("STEP", step or 0, saved, status, flush=True)
        time.sleep(0.02)
""")


pytestmark = pytest.mark.slow  # each test runs a job in a child interpreter (and kills it)


def spawn(db: str, base: str, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, db, base, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def test_script_that_ends_waits_for_its_job(tmp_path, tiny_model_path):
    db = str(tmp_path / "exit.duckdb")
    child = spawn(db, tiny_model_path, "exit")
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    job = out.split()[1]
    assert "waiting for 1 fine-tuning job(s) to finish" in err
    con = duckdb_ft.connect(db)
    assert con.execute("SELECT status FROM finetune('DESCRIBE', ?)", [job]).fetchall() == [("SUCCESS",)]
    assert con.execute("SELECT count(*) FROM duckdb_ft.models WHERE name = 'lifetime'").fetchall() == [(1,)]
    con.close()


def test_killed_job_is_error_after_reopen_and_resumes_from_its_checkpoint(tmp_path, tiny_model_path):
    db = str(tmp_path / "kill.duckdb")
    child = spawn(db, tiny_model_path, "poll")
    job, killed_at = None, None
    for line in child.stdout:
        parts = line.split()
        if parts[0] == "JOB":
            job = parts[1]
        elif parts[0] == "STEP" and parts[3] not in ("PENDING", "IN_PROGRESS"):
            child.kill()
            raise AssertionError(f"the job ended ({parts[3]}) before it could be killed mid-epoch")
        elif parts[0] == "STEP" and int(parts[2]) > 0 and int(parts[1]) > int(parts[2]):
            killed_at = int(parts[1])
            os.kill(child.pid, signal.SIGKILL)  # mid-epoch, after the first epoch's checkpoint
            break
    child.wait(timeout=30)
    assert job and killed_at, child.stderr.read()

    con = duckdb_ft.connect(db)
    d = json.loads(con.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchall()[0][0])
    assert d["status"] == "ERROR", d
    assert "process running this job stopped" in d["error"]["message"]
    assert "RESUME" in d["error"]["message"]
    assert con.execute("SELECT count(*) FROM duckdb_ft.models").fetchall() == [(0,)]
    assert con.execute("SELECT count(*) FROM big").fetchall() == [(80,)]
    [(saved,)] = con.execute("SELECT step FROM duckdb_ft.checkpoints WHERE job_id = ?", [job]).fetchall()
    assert 0 < saved < killed_at + 1

    assert con.execute("SELECT finetune('RESUME', ?)", [job]).fetchall() == [(f"Resumed fine-tuning job: {job}",)]
    assert duckdb_ft.wait(con, job, timeout=300) == "SUCCESS"
    d = json.loads(con.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchall()[0][0])
    assert d["progress"] == 1.0 and d["step"] == d["total_steps"]
    steps = [r[0] for r in con.execute("SELECT step FROM finetune_history(?)", [job]).fetchall()]
    assert steps == list(range(1, d["total_steps"] + 1))  # resumed steps replace, never duplicate
    assert con.execute("SELECT count(*) FROM duckdb_ft.models").fetchall() == [(1,)]
    assert con.execute("SELECT count(*) FROM duckdb_ft.checkpoints").fetchall() == [(0,)]
    con.close()
