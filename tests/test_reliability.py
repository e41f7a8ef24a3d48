"""Reliability: kills at random points, concurrency, and hostile input lose nothing and never lie."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import duckdb_ft
from conftest import catalog_counts, create, wait_for

KILL_POINTS = int(os.environ.get("DUCKDB_FT_KILL_POINTS", "4"))

#: Opens the database (resuming the job a kill stopped), creates the job if there is none, and says where it is:
#: READY, CREATING, TRAINING (the job exists), STEP <step> <total_steps> <status> as they change, DONE <status>.
CHILD = textwrap.dedent("""
    import json, sys, time
    import duckdb_ft
    path, base = sys.argv[1:3]
    con = duckdb_ft.connect(path, resume_jobs=True)
    jobs = con.execute("SELECT id FROM duckdb_ft.jobs").fetchall()
    print("READY", flush=True)
    if not jobs:
        print("CREATING", flush=True)
        job = con.execute("SELECT finetune('CREATE', 'survivor', ?, 'SELECT p AS prompt, c AS completion FROM big', "
                          "NULL, ?)", [base, json.dumps({"max_epochs": 3, "batch_size": 2})]).fetchall()[0][0]
    else:
        job = jobs[0][0]
    print("TRAINING", flush=True)
    said = None
    while True:
        status, step, total = con.execute("SELECT status, coalesce(step, 0), coalesce(total_steps, -1) "
                                          "FROM duckdb_ft.jobs WHERE id = ?", [job]).fetchall()[0]
        if (step, total, status) != said:
            print("STEP", step, total, status, flush=True)
            said = (step, total, status)
        if status not in ("PENDING", "IN_PROGRESS"):
            break
        time.sleep(0.02)
    print("DONE", duckdb_ft.wait(con, job), flush=True)
""")

#: Where a child can be when it is killed, in order.
PHASES = ("opening", "creating", "starting", "training", "storing", "finished")


def checksums(con):
    return {t: con.execute(f"SELECT count(*), sum(hash(p, c)) FROM {t}").fetchall() for t in ("big", "other")}


def phase_of(lines: list[str]) -> str:
    """Where a child was, from what it said: creating the job, starting it (the job exists, this process has made
    no step yet: loading the model and the checkpoint), training (it made a step), storing the model (after the
    last step), or finished."""
    steps = [line.split()[1:] for line in lines if line.startswith("STEP")]
    if any(line.startswith("DONE") for line in lines) or any(status == "SUCCESS" for _, _, status in steps):
        return "finished"
    steps = [(int(step), int(total)) for step, total, _ in steps]
    made = [b for (a, _), (b, _) in zip(steps, steps[1:]) if b > a]  # (a resume first goes back to its checkpoint)
    if made and made[-1] == steps[-1][1]:
        return "storing"
    if made:
        return "training"
    return "starting" if "TRAINING" in lines else "creating" if "CREATING" in lines else "opening"


@pytest.mark.slow
def test_random_kill_points_lose_nothing(tmp_path, tiny_model_path):
    """SIGKILL at each phase of a job (during CREATE, starting or resuming it, mid-epoch, while storing the model),
    then reopen: the user's tables unchanged, the job ERROR (to RESUME) or SUCCESS with its model whole."""
    db = str(tmp_path / "kills.duckdb")
    con = duckdb_ft.connect(db)
    con.execute("CREATE TABLE big AS SELECT 'prompt ' || i AS p, 'completion ' || (i * 3) AS c FROM range(60) t(i)")
    con.execute("CREATE TABLE other AS SELECT 'x' || i AS p, 'y' || i AS c FROM range(1000) t(i)")
    expected = checksums(con)
    con.close()
    rng = random.Random(20261124)
    # Each kill is aimed at a phase by what the child says, then a random delay: "creating" after CREATING (CREATE
    # takes a second or more), "starting" after TRAINING (a new process imports torch and loads the model, and the
    # checkpoint if there is one, before its first step), "training" after a step of the child's own, "second
    # epoch" after a step past the first epoch's end (its checkpoint saved: the next start resumes from it; three
    # epochs, so that a slow report still lands before the end), "storing" after the last step. More points
    # (DUCKDB_FT_KILL_POINTS) repeat the middle ones.
    middle = ["second epoch", "starting", "training", "starting"]
    aims = ["creating"] + [middle[k % len(middle)] for k in range(max(0, KILL_POINTS - 2))] + ["storing"]
    events = {"creating": lambda lines: "CREATING" in lines or "TRAINING" in lines,
              "starting": lambda lines: "TRAINING" in lines,
              "training": lambda lines: PHASES.index(phase_of(lines)) >= PHASES.index("training"),
              "second epoch": lambda lines: PHASES.index(phase_of(lines)) >= PHASES.index("training") and
              any(3 * int(line.split()[1]) > int(line.split()[2]) for line in lines if line.startswith("STEP")),
              "storing": lambda lines: phase_of(lines) in ("storing", "finished")}
    delays = {"creating": 1.5, "starting": 1.5, "training": 0.5, "second epoch": 0.5, "storing": 0.05}
    landed = []
    for aim in aims[:KILL_POINTS]:
        child = subprocess.Popen([sys.executable, "-c", CHILD, db, tiny_model_path], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
        seen = [child.stdout.readline().strip()]
        assert seen == ["READY"]
        while not events[aim](seen) and seen[-1] != "":  # an event, not a delay: what the child said
            seen.append(child.stdout.readline().strip())
        assert events[aim](seen), f"the child ended before {aim}: {seen}"
        delay = rng.uniform(0.0, delays[aim])
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        seen += child.stdout.read().split("\n")
        phase = phase_of([line.strip() for line in seen])
        least = "training" if aim == "second epoch" else aim
        assert PHASES.index(phase) >= PHASES.index(least) or aim == "creating", (aim, seen)

        con = duckdb_ft.connect(db)
        assert checksums(con) == expected, "a user's table changed"
        jobs = con.execute("SELECT id, status, error, step FROM duckdb_ft.jobs").fetchall()
        landed.append(f"{aim} +{delay:.2f} s: {phase}, step {jobs[0][3] if jobs else None}")
        if aim == "second epoch" and jobs[0][1] == "ERROR":  # an epoch's checkpoint, for the next start
            [(total,)] = con.execute("SELECT total_steps FROM duckdb_ft.jobs").fetchall()
            assert con.execute("SELECT step FROM duckdb_ft.checkpoints").fetchall() in ([(total // 3,)],
                                                                                      [(2 * total // 3,)])
        assert len(jobs) <= 1
        for job_id, status, error, _ in jobs:
            assert status in ("ERROR", "SUCCESS"), f"job left {status} after a kill while {phase}"
            if status == "ERROR":
                assert "stopped" in error and "RESUME" in error
            steps = [r[0] for r in con.execute("SELECT step FROM duckdb_ft.metrics WHERE job_id = ?",
                                               [job_id]).fetchall()]
            assert len(steps) == len(set(steps)), "duplicated steps after a resume"
        models = con.execute("SELECT m.job_id, j.status, octet_length(m.adapter) FROM duckdb_ft.models m "
                             "JOIN duckdb_ft.jobs j ON j.id = m.job_id").fetchall()
        assert all(status == "SUCCESS" and size > 0 for _, status, size in models), "a half-stored model"
        assert len(models) == (1 if jobs and jobs[0][1] == "SUCCESS" else 0)
        con.close()
    print(f"\nkill points: {len(landed)}: {'; '.join(landed)}")
    # The last run is left alone: the job resumes from its checkpoint and finishes (whichever open marked it ERROR:
    # the checks above reopen the database after every kill).
    final = subprocess.run([sys.executable, "-c", CHILD, db, tiny_model_path], capture_output=True, text=True,
                           timeout=600)
    con = duckdb_ft.connect(db)
    assert "DONE SUCCESS" in final.stdout, (final.stderr[-2000:], con.execute("FROM duckdb_ft.jobs").fetchall())
    d = json.loads(con.execute("SELECT finetune('DESCRIBE', id) FROM duckdb_ft.jobs").fetchall()[0][0])
    assert d["status"] == "SUCCESS" and d["step"] == d["total_steps"]
    steps = [r[0] for r in con.execute("SELECT step FROM finetune_history(?)", [d["id"]]).fetchall()]
    assert steps == list(range(1, d["total_steps"] + 1))
    assert checksums(con) == expected
    con.close()


# ------------------------------------------------------------------------------------------------ concurrency


def big_job(con, name, base, rows=200, **options):
    """A job on the first ``rows`` rows of table big (one epoch, batches of 4, unless ``options`` say otherwise)."""
    return create(con, name, base, f"SELECT p AS prompt, c AS completion FROM big LIMIT {rows}",
                  options={"max_epochs": 1, "batch_size": 4, **options})


@pytest.mark.slow
def test_complete_from_other_cursors_while_a_job_trains(big, tiny_model_path):
    con = big
    prompt_sql = ("SELECT complete(?, 'prompt ' || i, '{\"max_tokens\": 4}')::JSON ->> '$.choices[0].messages' "
                  "FROM range(8) t(i) ORDER BY i")
    reference = con.execute(prompt_sql, [tiny_model_path]).fetchall()
    job = big_job(con, "busy", tiny_model_path, rows=60, max_epochs=3, batch_size=1)
    wait_for(lambda: con.execute("SELECT coalesce(step, 0) FROM duckdb_ft.jobs").fetchall()[0][0] >= 1, 300,
             "the job's first step")  # COMPLETE runs beside a job that trains
    results, errors = [], []

    def worker():
        cur = con.cursor()
        try:
            for _ in range(3):
                results.append(cur.execute(prompt_sql, [tiny_model_path]).fetchall())
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert con.execute("SELECT status FROM finetune('DESCRIBE', ?)", [job]).fetchall()[0][0] in ("IN_PROGRESS",
                                                                                                  "SUCCESS")
    assert all(r == reference for r in results), "COMPLETE changed while a job trained next to it"
    assert duckdb_ft.wait(con, job) == "SUCCESS"


@pytest.mark.slow
def test_queued_jobs_run_one_at_a_time_in_order(big, tiny_model_path):
    con = big
    jobs = [big_job(con, f"q{i}", tiny_model_path, rows=40) for i in range(3)]
    for j in jobs:
        assert duckdb_ft.wait(con, j) == "SUCCESS"
    rows = con.execute("SELECT id, started_on, finished_on FROM duckdb_ft.jobs ORDER BY created_on").fetchall()
    assert [r[0] for r in rows] == jobs
    for (_, _, finished), (_, started, _) in zip(rows, rows[1:]):
        assert started >= finished, "a job started before the previous one finished"


@pytest.mark.slow
def test_two_threads_create_the_same_name_one_wins(big, tiny_model_path):
    con = big
    barrier = threading.Barrier(2)
    outcomes = []

    def attempt():
        cur = con.cursor()
        barrier.wait()
        try:
            outcomes.append(("ok", big_job(cur, "dup", tiny_model_path, rows=20)))
        except duckdb.Error as e:
            outcomes.append(("error", str(e)))

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kinds = sorted(k for k, _ in outcomes)
    assert kinds == ["error", "ok"], outcomes
    assert "model name 'main.dup' is taken" in next(v for k, v in outcomes if k == "error")
    assert con.execute("SELECT count(*) FROM duckdb_ft.jobs WHERE model_name = 'dup'").fetchall() == [(1,)]
    assert con.execute("SELECT count(DISTINCT job_id) FROM duckdb_ft.job_rows").fetchall() == [(1,)]
    duckdb_ft.wait(con, next(v for k, v in outcomes if k == "ok"))


@pytest.mark.slow
def test_closing_the_database_stops_a_job_cleanly(tmp_path, tiny_model_path):
    path = str(tmp_path / "closing.duckdb")
    con = duckdb_ft.connect(path)
    con.execute("CREATE TABLE big AS SELECT 'prompt ' || i AS p, 'completion ' || i AS c FROM range(200) t(i)")
    job = big_job(con, "closing", tiny_model_path, rows=40, max_epochs=5, batch_size=1)
    wait_for(lambda: con.execute("SELECT coalesce(step, 0) FROM duckdb_ft.jobs").fetchall()[0][0] >= 2, 300,
             "two training steps")
    con.close()
    con = duckdb_ft.connect(path)
    status, error, step = con.execute("SELECT status, error, step FROM duckdb_ft.jobs").fetchall()[0]
    assert status == "ERROR" and "database was closed" in error
    assert con.execute("SELECT step FROM duckdb_ft.checkpoints").fetchall() == [(step,)]  # saved as it stopped
    assert con.execute("SELECT count(*) FROM big").fetchall() == [(200,)]  # the user's table untouched
    assert con.execute("SELECT finetune('RESUME', ?)", [job]).fetchall()
    assert duckdb_ft.wait(con, job) == "SUCCESS"
    con.close()


# ------------------------------------------------------------------------------------------ hostile input


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**30) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)
option_names = st.sampled_from(["max_epochs", "learning_rate", "lora_r", "lora_alpha", "lora_dropout",
                                "target_modules", "batch_size", "max_seq_length", "warmup_ratio", "seed",
                                "bogus", "MAX_EPOCHS", ""])


@pytest.fixture(scope="module")
def fuzz_db(tiny_model_path):
    con = duckdb_ft.connect()
    con.execute("CREATE TABLE faq AS SELECT 'q' || i AS q, 'a' || i AS a FROM range(12) t(i)")
    job = con.execute("SELECT finetune('CREATE', 'taken', ?, 'SELECT q AS prompt, a AS completion FROM faq', "
                      "NULL, '{\"max_epochs\": 1}')", [tiny_model_path]).fetchall()[0][0]
    assert duckdb_ft.wait(con, job) == "SUCCESS"  # the name 'taken' must be held by a model
    yield con
    con.close()


@pytest.mark.slow
@FUZZ
@given(options=st.one_of(st.dictionaries(option_names, json_values, max_size=4).map(json.dumps),
                         st.text(max_size=40),
                         st.sampled_from(['{"max_epochs": NaN}', '{"max_epochs": 1, "max_epochs": 2}',
                                          '{"learning_rate": 1e999}', '{"lora_r": 1e400}', '[]', 'null',
                                          '{"max_epochs": {"nested": [1, 2]}}'])))
def test_fuzzed_options_get_a_clear_error_and_change_nothing(fuzz_db, tiny_model_path, options):
    con = fuzz_db
    before = catalog_counts(con)
    # 'taken' is taken: valid options end in that error, so no example starts a job.
    with pytest.raises(duckdb.Error, match=r"FINETUNE option|is taken"):
        con.execute("SELECT finetune('CREATE', 'taken', ?, 'SELECT q AS prompt, a AS completion FROM faq', NULL, ?)",
                    [tiny_model_path, options]).fetchall()
    assert catalog_counts(con) == before


@FUZZ
@given(name=st.text(max_size=30) | st.sampled_from(["a.b.c", "x'; DROP TABLE faq; --", '"quoted"', "ümlaut",
                                                     "1abc", "a b", "main.", ".x", "a..b", "DROP TABLE faq"]))
def test_fuzzed_model_names_get_a_clear_error_and_change_nothing(fuzz_db, tiny_model_path, name):
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?", name.strip()):
        name = name.strip() + " ?"  # a valid name would start a job: make it invalid
    con = fuzz_db
    before = catalog_counts(con)
    with pytest.raises(duckdb.Error, match="invalid model name|missing"):
        con.execute("SELECT finetune('CREATE', ?, ?, 'SELECT q AS prompt, a AS completion FROM faq')",
                    [name, tiny_model_path]).fetchall()
    assert catalog_counts(con) == before
    assert con.execute("SELECT count(*) FROM faq").fetchall() == [(12,)]


HOSTILE_QUERIES = [
    "SELECT q AS prompt, a AS completion FROM faq; DROP TABLE faq",
    "SELECT q AS prompt, a AS completion FROM faq -- harmless\n; DELETE FROM faq",
    "/* a comment */ DROP TABLE faq",
    "SELECT q AS prompt, a AS completion FROM faq /* ; */; CREATE TABLE x AS SELECT 1",
    "COPY faq TO '/tmp/stolen.csv'",
    "COPY (SELECT * FROM faq) TO '/tmp/stolen.csv'",
    "ATTACH '/tmp/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "PRAGMA enable_profiling",
    "SET memory_limit = '1MB'",
    "CALL pragma_version()",
    "EXPORT DATABASE '/tmp/export'",
    "WITH d AS (DELETE FROM faq RETURNING *) SELECT q AS prompt, a AS completion FROM d",
    "INSERT INTO faq VALUES ('x', 'y') RETURNING q AS prompt, a AS completion",
    "UPDATE faq SET a = 'hacked' RETURNING q AS prompt, a AS completion",
    "DETACH other",
    "CREATE MACRO evil() AS 1",
    "",
    ";",
    "SELECT",
]


@pytest.mark.parametrize("query", HOSTILE_QUERIES)
def test_hostile_training_queries_are_refused(fuzz_db, tiny_model_path, query):
    con = fuzz_db
    before = catalog_counts(con)
    faq = con.execute("SELECT count(*), sum(hash(q, a)) FROM faq").fetchall()
    with pytest.raises(duckdb.Error, match=r"training query|cannot parse SQL"):
        con.execute("SELECT finetune('CREATE', 'hostile', ?, ?)", [tiny_model_path, query]).fetchall()
    assert catalog_counts(con) == before
    assert con.execute("SELECT count(*), sum(hash(q, a)) FROM faq").fetchall() == faq
    assert not os.path.exists("/tmp/stolen.csv")


message_items = st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["user", "system", "assistant", "robot", "", None, 1]),
    "content": st.text(max_size=20) | st.none() | st.integers() | st.lists(st.text(max_size=3), max_size=2)})


@pytest.mark.slow
@FUZZ
@given(messages=st.lists(message_items, max_size=4).map(json.dumps) | st.text(max_size=30))
def test_fuzzed_messages_complete_or_fail_clearly(fuzz_db, tiny_model_path, messages):
    con = fuzz_db
    try:
        [(out,)] = con.execute("SELECT complete(?, ?, '{\"max_tokens\": 2}')", [tiny_model_path, messages]).fetchall()
        answer = json.loads(out)["choices"][0]["messages"]
        assert answer is not None
    except duckdb.Error as e:
        assert re.search(r"message|role|content|JSON", str(e)), str(e)
        answer = None
    # TRY_COMPLETE: the same answer where COMPLETE answers (greedy), NULL where it fails.
    [(tried,)] = con.execute("SELECT try_complete(?, ?, '{\"max_tokens\": 2}')", [tiny_model_path, messages]).fetchall()
    assert (None if tried is None else json.loads(tried)["choices"][0]["messages"]) == answer


@pytest.mark.slow
def test_hostile_data(fuzz_db, tiny_model_path):
    con = fuzz_db
    before = catalog_counts(con)
    # Invalid UTF-8 decoded from a BLOB: DuckDB refuses it while the rows are copied; nothing is left behind.
    with pytest.raises(duckdb.Error, match="reading the training data failed: Conversion Error"):
        con.execute("SELECT finetune('CREATE', 'utf', ?, 'SELECT decode(''\\xFF\\xFE''::BLOB) AS prompt, "
                    "''x'' AS completion')", [tiny_model_path]).fetchall()
    assert catalog_counts(con) == before
    # NULLs, empty strings and a 1 MB prompt: skipped, kept and truncated, counted, and the job succeeds.
    con.execute("CREATE TABLE odd AS SELECT * FROM (VALUES (NULL, 'a'), ('b', NULL), ('', ''), "
                "(repeat('long ', 200000), 'short'), ('fine', 'also fine')) t(p, c)")
    job = con.execute("SELECT finetune('CREATE', 'odd', ?, 'SELECT p AS prompt, c AS completion FROM odd', NULL, "
                      "'{\"max_epochs\": 1, \"max_seq_length\": 64}')", [tiny_model_path]).fetchall()[0][0]
    assert duckdb_ft.wait(con, job) == "SUCCESS"
    d = json.loads(con.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchall()[0][0])
    assert d["skipped_rows"] == 2 and d["train_rows"] == 3 and d["truncated_rows"] >= 1


@pytest.mark.slow
def test_a_100k_row_training_query_is_copied_in_bounded_memory(fuzz_db, tiny_model_path):
    import tracemalloc

    con = fuzz_db
    con.execute("CREATE TABLE huge AS SELECT 'question number ' || i AS p, 'answer number ' || i AS c "
                "FROM range(100000) t(i)")

    def create_peak_mb(name: str, rows: int) -> tuple[str, float, float]:
        """Python's own peak allocations during one CREATE (DuckDB's are not traced): unlike ru_maxrss, the
        figure does not depend on which heavier test ran before."""
        tracemalloc.start()
        start = time.perf_counter()
        try:
            job = con.execute(f"SELECT finetune('CREATE', '{name}', ?, 'SELECT p AS prompt, c AS completion "
                              f"FROM huge LIMIT {rows}', NULL, '{{\"max_epochs\": 1}}')",
                              [tiny_model_path]).fetchall()[0][0]
            peak = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
        con.execute("SELECT finetune('CANCEL', ?)", [job]).fetchall()
        duckdb_ft.wait(con, job, timeout=300)
        return job, peak, time.perf_counter() - start

    _, small_mb, _ = create_peak_mb("huge_10", 10)
    job, grown_mb, elapsed = create_peak_mb("huge", 100000)
    rows = con.execute("SELECT count(*) FROM duckdb_ft.job_rows WHERE job_id = ?", [job]).fetchall()[0][0]
    print(f"\n100k-row CREATE: {elapsed:.2f} s, peak Python allocations {grown_mb:.1f} MB (10 rows: {small_mb:.1f} MB)")
    assert rows == 100000
    # 100k rows held as Python strings and tuples would take over 15 MB more than 10 rows do.
    assert grown_mb - small_mb < 8, "the rows were materialized in Python"
