"""Usage history (issue 16): every COMPLETE, TRY_COMPLETE and EVALUATE counted per hour, model (version) and role
(calls, rows, prompt and completion tokens, errors), every job's trained tokens; ``finetune_usage()`` and ``SHOW
USAGE`` read it, a role its own rows, the administrator everyone's; no count is lost when several cursors complete
at once, nor when a flush fails."""

from __future__ import annotations

import json
import threading

import pytest

import duckdb_ft
from conftest import create, one, rows, wait
from duckdb_ft.catalog import usage as usagedb

OPTS = '{"max_tokens": 3, "temperature": 0}'


def usage(con, where="TRUE"):
    rel = con.execute(f"SELECT * FROM finetune_usage() WHERE {where} ORDER BY function_name, model_name, version")
    cols = [d[0] for d in rel.description]
    return [dict(zip(cols, r)) for r in rel.fetchall()]


@pytest.mark.slow
def test_concurrent_cursors_lose_no_count(con, tiny_model_path):
    threads, statements = 4, 6
    tokens = [[0, 0] for _ in range(threads)]
    failures = []

    def work(k):
        try:
            cur = con.cursor()
            for s in range(statements):
                # three rows with a prompt (two of them identical, generated once but each counted) and a NULL
                got = rows(cur, f"SELECT complete(?, p, '{OPTS}') FROM (VALUES ('a{k}'), ('b{s}'), ('b{s}'), "
                                "(NULL)) t(p)", tiny_model_path)
                for (text,) in got:
                    if text is not None:
                        u = json.loads(text)["usage"]
                        tokens[k][0] += u["prompt_tokens"]
                        tokens[k][1] += u["completion_tokens"]
                # TRY_COMPLETE: one good row, one with invalid options (an error, NULL)
                rows(cur, "SELECT try_complete(?, 'c', o) FROM (VALUES (?), ('{\"max_tokens\": -1}')) t(o)",
                     tiny_model_path, OPTS)
            cur.close()
        except Exception as e:  # pragma: no cover - reported below
            failures.append(e)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not failures
    got = {r["function_name"]: r for r in usage(con)}
    n = threads * statements
    c = got["COMPLETE"]
    assert (c["model_name"], c["version"], c["role"]) == (tiny_model_path, None, "admin")
    assert (c["calls"], c["rows"], c["errors"]) == (n, 3 * n, 0)
    assert (c["prompt_tokens"], c["completion_tokens"]) == tuple(map(sum, zip(*tokens)))
    assert c["tokens"] == c["prompt_tokens"] + c["completion_tokens"] and c["completion_tokens"] > 0
    t = got["TRY_COMPLETE"]
    assert (t["calls"], t["rows"], t["errors"]) == (n, 2 * n, n)
    assert str(c["end_time"] - c["start_time"]) == "1:00:00"


def test_a_failed_flush_keeps_its_counts_for_the_next(con, tiny_model_path, monkeypatch):
    real = usagedb.write
    calls = []

    def flaky(cur, batch):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("conflict")
        real(cur, batch)

    monkeypatch.setattr(usagedb, "write", flaky)
    rows(con, f"SELECT complete(?, 'x', '{OPTS}')", tiny_model_path)
    assert one(con, "SELECT count(*) FROM duckdb_ft.usage") == 0  # the first flush failed
    rows(con, f"SELECT complete(?, 'y', '{OPTS}')", tiny_model_path)
    assert [(r["calls"], r["rows"]) for r in usage(con)] == [(2, 2)]


def test_a_failing_complete_counts_its_call_as_errors(con, tiny_model_path):
    with pytest.raises(duckdb_ft.InvalidArgument):
        rows(con, "SELECT complete(?, p, '{\"max_tokens\": -1}') FROM (VALUES ('a'), ('b')) t(p)", tiny_model_path)
    [r] = usage(con)
    assert (r["function_name"], r["calls"], r["rows"], r["errors"], r["prompt_tokens"]) == ("COMPLETE", 1, 2, 2, 0)


@pytest.mark.slow
def test_roles_see_their_own_usage_and_the_administrator_everyones(tmp_path, tiny_model_path):
    path = str(tmp_path / "u.duckdb")
    admin = duckdb_ft.connect(path)
    admin.execute("CREATE TABLE t AS SELECT 'q' || i AS prompt, 'answer ' || i AS completion FROM range(8) t(i)")
    job = create(admin, "m", tiny_model_path, "SELECT * FROM t", options={"max_epochs": 1, "batch_size": 4})
    assert wait(admin, job) == "SUCCESS"
    job2 = create(admin, "m", "m", "SELECT * FROM t", options={"max_epochs": 1, "batch_size": 4, "version": True})
    assert wait(admin, job2) == "SUCCESS"
    for sql in ("CREATE ROLE analyst", "GRANT ROLE analyst TO USER ann", "GRANT USAGE ON SCHEMA main TO ROLE analyst",
                "GRANT USAGE ON MODEL m TO ROLE analyst", "GRANT SELECT ON TABLE t TO ROLE analyst"):
        admin.execute(sql)
    rows(admin, f"SELECT complete('m@v1', prompt, '{OPTS}') FROM t")
    one(admin, "SELECT finetune('EVALUATE', '[\"m\", \"m@v1\"]', 'SELECT * FROM t LIMIT 3', "
               "'{\"metrics\": [\"exact_match\"], \"max_tokens\": 2}')")
    ann = duckdb_ft.connect(path, user="ann")
    ann.execute("USE ROLE analyst")
    rows(ann, f"SELECT complete('main.m', 'hello', '{OPTS}')")
    mine = usage(ann)
    assert [(r["function_name"], r["model_name"], r["version"], r["role"], r["calls"], r["rows"]) for r in mine] == \
        [("COMPLETE", "main.m", "v2", "analyst", 1, 1)]
    everyone = {(r["function_name"], r["version"], r["role"]): r for r in usage(admin)}
    assert everyone["COMPLETE", "v1", "admin"]["rows"] == 8
    assert everyone["COMPLETE", "v2", "analyst"]["calls"] == 1
    ev1, ev2 = everyone["EVALUATE", "v1", "admin"], everyone["EVALUATE", "v2", "admin"]
    assert (ev1["calls"], ev1["rows"], ev2["rows"]) == (1, 3, 3) and ev1["prompt_tokens"] > 0
    trained = {j: one(admin, "SELECT trained_tokens FROM duckdb_ft.jobs WHERE id = ?", j) for j in (job, job2)}
    assert everyone["FINETUNE", "v1", "admin"]["trained_tokens"] == trained[job] > 0
    assert everyone["FINETUNE", "v2", "admin"]["trained_tokens"] == trained[job2]
    shown = ann.execute("SHOW USAGE").fetchall()
    assert len(shown) == 1 and "analyst" in shown[0]
    ann.close()
    admin.close()
