"""``duckdb-ft serve``'s lifetime: SIGTERM while a job trains and 16 answers stream exits 0 without a traceback,
each stream finished or cut by an error event, the job checkpointed and resumed from its checkpoint by the next
start (the steps before it are not trained again); SIGKILL then a start resumes it again."""

from __future__ import annotations

import json
import signal
import threading
import urllib.request

import pytest
from conftest import Server, allow_base_model, wait_for

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow


def sql(server, token, statement):
    """The rows of ``statement`` run through the server's SQL API (as text)."""
    req = urllib.request.Request(server.url + "/api/v2/statements", data=json.dumps({"statement": statement}).encode(),
                                 method="POST", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())["data"]


def job_state(server, token, job):
    return tuple(sql(server, token, f"SELECT status, step FROM finetune('DESCRIBE', '{job}')")[0])


def steps(server, token, job):
    """The steps an IN_PROGRESS job has done (-1 in any other status)."""
    status, step = job_state(server, token, job)
    return int(step or 0) if status == "IN_PROGRESS" else -1


def metrics(server, token):
    req = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    return urllib.request.urlopen(req, timeout=30).read().decode()


def queue_depth(server, token):
    return next(float(line.split()[1]) for line in metrics(server, token).splitlines()
                if line.startswith("duckdb_ft_queue_depth"))


STREAMS = 16


def history(con, job, up_to):
    """The job's per-step metrics up to step ``up_to``, as rows (elapsed_s included: rewritten rows would differ)."""
    return con.execute("SELECT step, epoch, training_loss, tokens, elapsed_s FROM finetune_history(?) "
                       "WHERE step <= ? ORDER BY step", [job, up_to]).fetchall()


def test_sigterm_mid_stream_and_training_exits_0_and_restarts_resume_the_job(tmp_path, tiny_model_path):
    import duckdb_ft
    from duckdb_ft.governance.credentials import first_token

    db = str(tmp_path / "life.duckdb")
    con = duckdb_ft.connect(db)
    allow_base_model(con, tiny_model_path)
    con.execute("CREATE TABLE t AS SELECT 'Say the number ' || i AS p, 'number ' || i AS c FROM range(2000) t(i)")
    token = first_token(con.duckdb_connection.cursor())[0]
    con.close()

    server = Server(db, "--grace", "3")
    job = sql(server, token, "SELECT finetune('CREATE', 'long_job', 'tiny', 'SELECT p AS prompt, c AS completion "
                             "FROM t', NULL, '{\"max_epochs\": 10, \"batch_size\": 4}')")[0][0]
    wait_for(lambda: steps(server, token, job) >= 2, what="the job's first steps")
    assert f'duckdb_ft_job_training_tokens_per_second{{job_id="{job}"}}' in metrics(server, token)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=token, max_retries=0, timeout=120)
    sending: list[int] = []  # one entry per stream that has received text
    ends: list[str] = []  # per stream: its finish_reason, or the code of the error event that cut it

    def stream() -> None:
        try:
            chunks = []
            for c in client.completions.create(model="tiny", prompt="Tell me a story", max_tokens=300, stream=True):
                if not chunks:
                    sending.append(1)
                chunks.append(c)
            ends.append(chunks[-1].choices[0].finish_reason or "no finish_reason")
        except openai.APIError as e:  # cut at the grace deadline: an error event in OpenAI's shape
            ends.append(e.body.get("code") if isinstance(e.body, dict) else f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=stream) for _ in range(STREAMS)]
    for t in threads:
        t.start()
    wait_for(lambda: len(sending) == STREAMS or ends, what=f"{STREAMS} streams sending text")
    assert not ends and len(sending) == STREAMS, ends  # every stream is in flight when SIGTERM comes
    assert server.stop(signal.SIGTERM) == 0, server.log()[-3000:]
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and len(ends) == STREAMS
    assert set(ends) <= {"length", "stop", "server_shutting_down"}, ends  # finished, or cut by an error event
    log = server.log()
    assert "Traceback" not in log and "stopped; the database is closed" in log, log[-3000:]

    stopped = duckdb_ft.connect(db)
    described = json.loads(stopped.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchall()[0][0])
    checkpoint = stopped.execute("SELECT step FROM duckdb_ft.checkpoints WHERE job_id = ?", [job]).fetchall()
    assert described["status"] == "ERROR" and checkpoint and checkpoint[0][0] > 0, (described, checkpoint)
    at = checkpoint[0][0]
    before = history(stopped, job, at)
    stopped.close()
    assert [r[0] for r in before][-1] == at  # the metrics up to the checkpoint were written

    server = Server(db)  # resumes the job from its checkpoint, and it trains on past it
    wait_for(lambda: steps(server, token, job) > at, what="the job to resume and train past its checkpoint")
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    server = Server(db)  # after a SIGKILL too
    wait_for(lambda: job_state(server, token, job)[0] == "IN_PROGRESS", what="the job to resume after SIGKILL")
    sql(server, token, f"SELECT finetune('CANCEL', '{job}')")
    assert server.stop() == 0 and "Traceback" not in server.log()
    after = duckdb_ft.connect(db)
    try:  # resumed, not restarted: the steps up to the checkpoint were never trained (and logged) again
        assert history(after, job, at) == before
    finally:
        after.close()
