"""Attacks on privileges and on other sessions (issue 12), each a test named after the behaviour it protects.

The attacker is a user session with USAGE on ``main``, SELECT on ``pub``, INSERT on ``logt``, CREATE MODEL on
``ml`` and CREATE TABLE/VIEW on ``main``; ``secret`` and the attached database ``hr`` are not granted.
"""

from __future__ import annotations

import json
import threading
import time

import duckdb
import pytest

import duckdb_ft
from duckdb_ft.errors import PermissionDenied
from conftest import ONE_EPOCH, allow_base_model, denied, setup_attack_db, user_connection, wait_for


@pytest.fixture
def attack(request):
    admin = duckdb_ft.connect()
    setup_attack_db(admin)
    if "tiny_model_path" in request.fixturenames:  # the folder is a base model users may name
        allow_base_model(admin, request.getfixturevalue("tiny_model_path"))
    u1 = user_connection(admin, "u1")
    yield admin, u1
    u1.close()
    admin.close()


# ------------------------------------------------------------------------------------------ 1. CTE names

def test_a_cte_name_hides_a_table_only_inside_its_own_scope(attack):
    admin, u1 = attack
    denied(u1, "SELECT * FROM secret WHERE 1 IN (WITH secret AS (SELECT 1) SELECT * FROM secret)",
           match="'main.secret'")
    denied(u1, "CREATE VIEW leak AS SELECT * FROM secret WHERE 1 IN (WITH secret AS (SELECT 1) SELECT * FROM secret)",
           match="'main.secret'")
    assert admin.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'leak'").fetchall() == [(0,)]
    # a CTE that really shadows the table is fine: nothing of secret is read
    assert u1.execute("WITH secret AS (SELECT 1 AS x) SELECT * FROM secret").fetchall() == [(1,)]
    assert u1.execute("WITH a AS (SELECT * FROM pub), b AS (SELECT * FROM a) SELECT count(*) FROM b").fetchall() \
        == [(5,)]


def test_a_cte_name_cannot_smuggle_a_table_into_a_training_snapshot(attack, tiny_model_path):
    admin, u1 = attack
    q = ("SELECT s AS prompt, x::VARCHAR AS completion FROM secret "
         "WHERE 1 IN (WITH secret AS (SELECT 1) SELECT * FROM secret)")
    denied(u1, "SELECT finetune('CREATE', 'ml.leak', ?, ?, NULL, ?)", tiny_model_path, q, ONE_EPOCH, match="main.secret")
    assert admin.execute("SELECT count(*) FROM duckdb_ft.jobs").fetchall() == [(0,)]
    assert admin.execute("SELECT count(*) FROM duckdb_ft.job_rows").fetchall() == [(0,)]


# ------------------------------------------------------------------------------- 2. SHOW and PIVOT

def test_show_of_a_pivot_without_in_list_is_refused_before_it_binds(attack):
    admin, u1 = attack
    denied(u1, "SHOW (PIVOT secret ON s USING count(*))")
    denied(u1, "SHOW (PIVOT (SELECT * FROM read_csv('/etc/passwd', header=false)) ON column0 USING count(*))")
    denied(u1, "SELECT * FROM (PIVOT pub ON s USING count(*))", match="PIVOT without an IN list")
    denied(u1, "PIVOT pub ON s USING count(*)")
    denied(u1, "DESCRIBE (PIVOT secret ON s USING count(*))")


def test_pivot_with_an_in_list_is_authorized_as_the_query_it_runs(attack):
    admin, u1 = attack
    assert u1.execute("PIVOT pub ON s IN ('q1', 'q2') USING sum(x)").fetchall() == [(1, 2)]
    denied(u1, "PIVOT secret ON s IN ('salary 1') USING sum(x)", match="'main.secret'")


def test_show_lists_nothing_the_role_cannot_see(attack):
    admin, u1 = attack
    for sql in ("SHOW ALL TABLES", "SHOW TABLES", "SHOW secret", "DESCRIBE secret", "SUMMARIZE secret",
                "SELECT * FROM duckdb_tables()", "SELECT * FROM information_schema.tables",
                "SELECT * FROM duckdb_views", "DESCRIBE SELECT * FROM secret"):
        denied(u1, sql)
    assert u1.execute("DESCRIBE pub").fetchall()[0][0] == "s"
    assert u1.execute("DESCRIBE SELECT x FROM pub").fetchall()[0][0] == "x"


# ------------------------------------------------------------------------- 4. INSERT ... RETURNING

def test_insert_privilege_does_not_read_the_table(attack):
    admin, u1 = attack
    denied(u1, "INSERT INTO logt SELECT * FROM logt RETURNING *", match="'main.logt'")
    denied(u1, "INSERT INTO logt SELECT * FROM logt", match="'main.logt'")
    denied(u1, "INSERT INTO logt VALUES ('a', 1) RETURNING *", match="'main.logt'")
    denied(u1, "INSERT INTO logt SELECT * FROM secret", match="'main.secret'")
    assert admin.execute("SELECT count(*) FROM logt").fetchall() == [(1,)]
    u1.execute("INSERT INTO logt SELECT * FROM pub")
    assert admin.execute("SELECT count(*) FROM logt").fetchall() == [(6,)]


# ------------------------------------------------------------------------------ 5. other databases

def test_three_part_names_are_checked_in_their_own_database(attack):
    admin, u1 = attack
    for sql in ("SELECT * FROM hr.main.salaries", "SELECT * FROM hr.salaries", "SELECT * FROM hr.main.pub",
                "SELECT * FROM hr.pub", "SELECT * FROM pub UNION ALL SELECT * FROM hr.main.salaries",
                "INSERT INTO logt SELECT * FROM hr.salaries", "INSERT INTO hr.main.pub VALUES ('x', 1)",
                "CREATE TABLE hr.main.mine (x INT)", "SELECT * FROM temp.main.pub", "CREATE TEMP TABLE t (x INT)",
                "SELECT * FROM system.main.duckdb_tables"):
        denied(u1, sql)
    assert u1.execute("SELECT count(*) FROM memory.main.pub").fetchall() == [(5,)]
    denied(u1, "SELECT count(*) FROM memory.main.secret", match="'main.secret'")


def test_a_user_view_over_a_forbidden_table_reads_nothing(attack):
    admin, u1 = attack
    admin.execute("CREATE VIEW v_hr AS SELECT * FROM hr.main.salaries")
    admin.execute("GRANT SELECT ON VIEW v_hr TO ROLE attacker").fetchall()
    denied(u1, "SELECT * FROM v_hr", match="database 'hr'")
    denied(u1, "SELECT * FROM v_sec", match="v_sec|main.secret")
    u1.execute("CREATE VIEW mine AS SELECT * FROM pub")
    assert u1.execute("SELECT count(*) FROM mine").fetchall() == [(5,)]


def test_internal_functions_and_session_ids_are_not_reachable_from_sql(attack, tiny_model_path):
    admin, u1 = attack
    for sql in ("SELECT __ft_session_id()", "SELECT __ft_engine()",
                f"SELECT __ft_finetune(__ft_session_id(), 'SHOW', NULL, NULL, NULL, NULL, NULL)"):
        denied(u1, sql, match="internal functions")


def test_a_trailing_comment_after_the_semicolon_is_fine(attack):
    admin, u1 = attack
    assert u1.execute("SELECT count(*) FROM pub; -- how many").fetchall() == [(5,)]


# ------------------------------------------------------------------------------------------ 3. ownership

def owners(admin):
    return admin.execute("SELECT object_name, owner FROM duckdb_ft.object_owners ORDER BY ALL").fetchall()


def test_create_if_not_exists_of_an_existing_table_does_not_take_its_ownership(attack):
    admin, u1 = attack
    u1.execute("CREATE TABLE IF NOT EXISTS secret (x INT)")
    assert owners(admin) == []
    denied(u1, "DROP TABLE secret", match="OWNERSHIP")
    denied(u1, "SELECT * FROM secret", match="'main.secret'")
    denied(u1, "CREATE OR REPLACE TABLE secret (x INT)", match="OWNERSHIP")
    assert admin.execute("SELECT count(*) FROM secret").fetchall() == [(5,)]


def test_ownership_of_a_table_created_in_a_rolled_back_transaction_is_rolled_back(attack):
    admin, u1 = attack
    u1.execute("BEGIN TRANSACTION")
    u1.execute("CREATE TABLE later (x INT)")
    u1.execute("ROLLBACK")
    assert owners(admin) == []
    admin.execute("CREATE TABLE later AS SELECT 42 AS x")
    denied(u1, "SELECT * FROM later", match="'main.later'")
    denied(u1, "DROP TABLE later", match="OWNERSHIP")
    u1.execute("BEGIN TRANSACTION")
    u1.execute("CREATE TABLE kept (x INT)")
    u1.execute("COMMIT")
    assert owners(admin) == [("main.kept", "attacker")]


def test_drop_removes_ownership_so_a_reused_name_is_not_the_old_owners(attack):
    admin, u1 = attack
    u1.execute("CREATE TABLE scratch AS SELECT * FROM pub")
    assert owners(admin) == [("main.scratch", "attacker")]
    assert u1.execute("SELECT count(*) FROM scratch").fetchall() == [(5,)]
    u1.execute("DROP TABLE scratch")
    assert owners(admin) == []
    admin.execute("CREATE TABLE scratch AS SELECT 'admin data' AS s")
    denied(u1, "SELECT * FROM scratch", match="'main.scratch'")
    # and when the administrator drops a user's table, the name is free of the user too
    u1.execute("CREATE VIEW my_view AS SELECT * FROM pub")
    admin.execute("DROP VIEW my_view")
    admin.execute("CREATE VIEW my_view AS SELECT * FROM secret")
    denied(u1, "SELECT * FROM my_view")
    denied(u1, "DROP VIEW my_view", match="OWNERSHIP")


# -------------------------------------------------------------- 6, 7, 8. one session cannot stop the others

def in_thread(fn, *args):
    """Run fn in a thread; returns (thread, box) where box gets 'result' or 'error'."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


@pytest.mark.slow
def test_a_finetune_nested_in_a_training_query_is_refused_and_hangs_nothing(attack, tiny_model_path):
    admin, u1 = attack
    inner = (f"SELECT __ft_finetune(__ft_session_id(), ''CREATE'', ''ml.inner'', ''{tiny_model_path}'', "
             f"''SELECT s AS prompt, s AS completion FROM pub'', NULL, NULL) AS prompt, s AS completion FROM pub")
    t, box = in_thread(lambda: u1.execute(f"SELECT finetune('CREATE', 'ml.outer', ?, '{inner}', NULL, ?)",
                                          [tiny_model_path, ONE_EPOCH]).fetchall())
    t.join(30)
    assert not t.is_alive(), "a nested FINETUNE hung the CREATE"
    assert isinstance(box.get("error"), PermissionDenied) and "internal functions" in str(box["error"])
    # the administrator's training query may not start a job either (the Cortex macro included)
    nested = ("SELECT snowflake.cortex.finetune('CREATE', 'ml.inner2', 'x', 'SELECT 1') AS prompt, "
              "'c' AS completion")
    with pytest.raises(PermissionDenied, match="start another fine-tuning job"):
        admin.execute("SELECT finetune('CREATE', 'ml.outer2', ?, ?, NULL, ?)", [tiny_model_path, nested, ONE_EPOCH])
    job = admin.execute("SELECT finetune('CREATE', 'ml.after', ?, 'SELECT s AS prompt, s AS completion FROM pub', "
                        "NULL, ?)", [tiny_model_path, ONE_EPOCH]).fetchall()[0][0]
    assert duckdb_ft.wait(admin, job, 120) == "SUCCESS"


# Hours of scanning on any machine: the copy runs until it is interrupted.
SLOW_QUERY = ("SELECT p.s AS prompt, p.s AS completion FROM pub p, range(2000000000000) r(i) "
              "WHERE hash(i) % 1000000007 = 3")


@pytest.mark.slow
def test_a_long_training_query_is_interruptible_and_blocks_no_other_create(attack, tiny_model_path):
    admin, u1 = attack
    t, box = in_thread(lambda: u1.execute("SELECT finetune('CREATE', 'ml.slow', ?, ?, NULL, ?)",
                                          [tiny_model_path, SLOW_QUERY, ONE_EPOCH]).fetchall())
    wait_for(lambda: u1.session.busy_cursor is not None or not t.is_alive(), 120, "the slow CREATE's copy")
    time.sleep(0.5)  # into the copy's scan
    assert t.is_alive(), f"the slow copy should still run: {box}"
    other = admin.cursor()  # another session of the administrator: its CREATE does not wait for the copy
    q, quick = in_thread(lambda: other.execute("SELECT finetune('CREATE', 'ml.quick', ?, 'SELECT s AS prompt, "
                                               "s AS completion FROM pub', NULL, ?)",
                                               [tiny_model_path, ONE_EPOCH]).fetchall())
    q.join(300)  # a CREATE that waited for the copy would wait as long as the copy runs: hours
    assert not q.is_alive(), "the other CREATE waited for the slow copy"
    assert "error" not in quick, quick
    job = quick["result"][0][0]
    assert t.is_alive()  # so the other CREATE did not wait for it
    u1.interrupt()
    t.join(20)
    assert not t.is_alive(), "interrupt() did not stop the copy"
    assert isinstance(box.get("error"), duckdb.InterruptException), box
    assert admin.execute("SELECT count(*) FROM duckdb_ft.jobs WHERE model_name = 'slow'").fetchall() == [(0,)]
    assert duckdb_ft.wait(admin, job, 120) == "SUCCESS"
    other.close()


def test_the_training_query_runs_once(attack, tiny_model_path):
    admin, u1 = attack
    admin.execute("CREATE SEQUENCE seq")
    q = "SELECT 'p' || nextval('seq') AS prompt, 'c' AS completion FROM range(12)"
    job = admin.execute("SELECT finetune('CREATE', 'ml.once', ?, ?, NULL, ?)", [tiny_model_path, q, ONE_EPOCH]).fetchall()
    assert admin.execute("SELECT currval('seq')").fetchall() == [(12,)]
    duckdb_ft.wait(admin, job[0][0], 120)


@pytest.mark.slow
def test_one_sessions_close_leaves_the_administrators_job_running(tmp_path, tiny_model_path):
    path = str(tmp_path / "shared.duckdb")
    admin = duckdb_ft.connect(path)
    setup_attack_db(admin)
    u1 = duckdb_ft.connect(path, user="u1")
    assert u1.session.engine is admin.session.engine
    long = json.dumps({"max_epochs": 10, "batch_size": 1})
    q = "SELECT s AS prompt, s AS completion FROM pub"
    job = admin.execute("SELECT finetune('CREATE', 'ml.adm', ?, ?, NULL, ?)", [tiny_model_path, q, long]).fetchall()[0][0]
    u1.close()
    with pytest.raises(duckdb.ConnectionException):
        u1.execute("SELECT 1")
    assert admin.execute("SELECT count(*) FROM pub").fetchall() == [(5,)]
    assert duckdb_ft.wait(admin, job, 300) == "SUCCESS"
    later = admin.execute("SELECT finetune('CREATE', 'ml.adm2', ?, ?, NULL, ?)", [tiny_model_path, q, ONE_EPOCH]).fetchall()
    assert duckdb_ft.wait(admin, later[0][0], 120) == "SUCCESS"
    admin.close()


# ---------------------------------------------------------------------------------------------- 9, 10

def test_try_complete_is_null_for_any_failure_of_a_row(attack):
    admin, u1 = attack
    deep = "[" * 100000 + "]" * 100000
    assert admin.execute("SELECT try_complete(repeat('x', 100000), 'hi')").fetchall() == [(None,)]
    assert admin.execute("SELECT try_complete('smollm2-135m', ?, '{}')", [deep]).fetchall() == [(None,)]
    assert admin.execute("SELECT try_complete('smollm2-135m', 'hi', ?)", ['{"a": ' + deep + "}"]).fetchall() \
        == [(None,)]


@pytest.mark.slow
def test_exit_after_closing_with_a_queued_job_prints_no_traceback(tmp_path, tiny_model_path):
    import subprocess
    import sys

    script = f"""
import duckdb_ft, json
con = duckdb_ft.connect({str(tmp_path / 'exit.duckdb')!r})
con.execute("CREATE TABLE t AS SELECT 'q' || i AS prompt, 'a' AS completion FROM range(20) r(i)")
opts = json.dumps({{"max_epochs": 10, "batch_size": 1}})
for name in ("one", "two"):
    con.execute("SELECT finetune('CREATE', ?, ?, 'SELECT * FROM t', NULL, ?)", [name, {tiny_model_path!r}, opts])
con.close()
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr


# ------------------------------------------------------------------------------------------- smaller items

def test_a_model_the_role_may_not_use_is_not_told_apart_from_none(attack, tiny_model_path):
    admin, u1 = attack
    job = admin.execute("SELECT finetune('CREATE', 'ml.private', ?, 'SELECT s AS prompt, s AS completion FROM pub', "
                        "NULL, ?)", [tiny_model_path, ONE_EPOCH]).fetchall()[0][0]
    assert duckdb_ft.wait(admin, job, 120) == "SUCCESS"
    for name in ("ml.private", "ml.nothing"):
        for sql in (f"DESCRIBE MODEL {name}", f"SHOW GRANTS ON MODEL {name}", f"DROP MODEL {name}"):
            with pytest.raises(PermissionDenied, match="does not exist or (USAGE|OWNERSHIP) is required") as e:
                u1.execute(sql).fetchall()
            assert "admin" not in str(e.value)
        assert u1.execute(f"DROP MODEL IF EXISTS {name}").fetchall() == [
            (f"Model {name} does not exist or not authorized, statement succeeded.",)]
    assert admin.execute("SELECT count(*) FROM duckdb_ft.models WHERE name = 'private'").fetchall() == [(1,)]


def test_create_checks_what_the_base_model_bounds(attack, tiny_model_path):
    admin, u1 = attack
    q = "SELECT s AS prompt, s AS completion FROM pub"
    with pytest.raises(duckdb_ft.InvalidArgument, match=r"target_modules \['nope'\] name no module"):
        admin.execute("SELECT finetune('CREATE', 'ml.t1', ?, ?, NULL, ?)",
                      [tiny_model_path, q, json.dumps({"target_modules": ["q_proj", "nope"]})])
    with pytest.raises(duckdb_ft.InvalidArgument, match="beyond the context"):
        admin.execute("SELECT finetune('CREATE', 'ml.t2', ?, ?, NULL, ?)",
                      [tiny_model_path, q, json.dumps({"max_seq_length": 4096})])
    with pytest.raises(duckdb_ft.InvalidArgument, match="the validation query returned no row"):
        admin.execute("SELECT finetune('CREATE', 'ml.t3', ?, ?, ?, ?)",
                      [tiny_model_path, q, q + " WHERE false", ONE_EPOCH])
    assert admin.execute("SELECT count(*) FROM duckdb_ft.jobs").fetchall() == [(0,)]


@pytest.mark.slow
def test_wait_with_a_nan_timeout_is_an_error(attack, tiny_model_path):
    admin, u1 = attack
    job = admin.execute("SELECT finetune('CREATE', 'ml.w', ?, 'SELECT s AS prompt, s AS completion FROM pub', "
                        "NULL, ?)", [tiny_model_path, ONE_EPOCH]).fetchall()[0][0]
    with pytest.raises(duckdb_ft.InvalidArgument, match="NaN"):
        admin.execute("SELECT finetune('WAIT', ?, 'nan')", [job])
    duckdb_ft.wait(admin, job, 120)
