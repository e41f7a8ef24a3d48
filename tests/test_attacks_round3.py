"""Attacks of the third privileges review (issue 30), each a test named after the behaviour it protects.

The attacker is conftest.setup_attack_db's user session (USAGE on ``main``, SELECT on ``pub``, INSERT on ``logt``, CREATE
MODEL on ``ml``, CREATE TABLE/VIEW on ``main``); the administrator also owns a sequence and an enum type.
"""

from __future__ import annotations

import json

import duckdb
import pytest

import duckdb_ft
from duckdb_ft.errors import PermissionDenied
from conftest import ONE_EPOCH, allow_base_model, denied, setup_attack_db, user_connection


@pytest.fixture
def attack():
    admin = duckdb_ft.connect()
    setup_attack_db(admin)
    admin.execute("CREATE SEQUENCE seq")
    admin.execute("CREATE TYPE mood AS ENUM ('calm', 'furious')")
    u1 = user_connection(admin, "u1")
    yield admin, u1
    u1.close()
    admin.close()


def function_denied(con, sql, name, what="function"):
    denied(con, sql, match=f"{what} '{name}' does not exist or is for the administrator only")


# ------------------------------------------------------------------------------------ 2. scalar functions

def test_a_user_cannot_advance_or_read_the_administrators_sequences(attack):
    admin, u1 = attack
    for sql in ("SELECT nextval('seq')", "SELECT currval('seq')", "SELECT setval('seq', 1000)",
                "SELECT system.main.nextval('seq')", "SELECT 'seq'.nextval()",
                "SELECT s FROM pub WHERE x < nextval('seq')",
                "INSERT INTO logt VALUES ('a', nextval('seq'))",
                "INSERT INTO logt SELECT s, nextval('seq') FROM pub",
                "CREATE TABLE mine (id BIGINT DEFAULT nextval('seq'), s VARCHAR)",
                "CREATE TABLE mine (id BIGINT CHECK (id < currval('seq')))",
                "CREATE VIEW mine AS SELECT nextval('seq') AS n",
                "SET VARIABLE n = nextval('seq')"):
        denied(u1, sql, match="'(system.main.)?(nextval|currval|setval)' does not exist or is for the administrator")
    assert admin.execute("SELECT nextval('seq')").fetchall() == [(1,)]  # never advanced
    assert admin.execute("SELECT count(*) FROM logt").fetchall() == [(1,)]


def test_catalog_and_setting_reading_scalars_are_for_the_administrator(attack):
    admin, u1 = attack
    for sql, name in [("SELECT current_setting('memory_limit')", "current_setting"),
                      ("SELECT current_database()", "current_database"),
                      ("SELECT current_catalog", "current_catalog"), ("SELECT current_schema", "current_schema"),
                      ("SELECT current_schemas(true)", "current_schemas"), ("SELECT version()", "version"),
                      ("SELECT in_search_path('memory', 'main')", "in_search_path"),
                      ("SELECT json_serialize_plan('SELECT * FROM secret')", "json_serialize_plan"),
                      ("SELECT pg_catalog.pg_get_viewdef(1)", "pg_catalog.pg_get_viewdef"),
                      ("SELECT txid_current()", "txid_current"), ("SELECT pg_sleep(1)", "pg_sleep")]:
        function_denied(u1, sql, name)


def test_a_user_cannot_name_the_administrators_types(attack):
    admin, u1 = attack
    for sql in ("SELECT enum_range(NULL::mood)", "SELECT 'calm'::mood", "SELECT TRY_CAST(s AS mood) FROM pub",
                "SELECT NULL::STRUCT(a mood)", "CREATE TABLE mine (m mood)", "CREATE TABLE mine (m mood[])",
                "INSERT INTO logt VALUES ('calm'::mood, 1)"):
        function_denied(u1, sql, "mood", "type")
    function_denied(u1, "SELECT NULL::main.mood", "main.mood", "type")
    assert admin.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'mine'").fetchall() == [(0,)]


def test_an_unknown_function_or_type_gives_the_error_of_a_forbidden_one(attack):
    admin, u1 = attack
    messages = []
    for sql in ("SELECT nextval('seq')", "SELECT no_such_function('seq')", "SELECT 'calm'::mood",
                "SELECT 'calm'::no_such_type"):
        with pytest.raises(PermissionDenied) as e:
            u1.execute(sql).fetchall()
        messages.append(str(e.value).replace("nextval", "X").replace("no_such_function", "X")
                        .replace("no_such_type", "X").replace("mood", "X").replace("function", "F")
                        .replace("type", "F"))
    assert len(set(messages)) == 1, messages


def test_pure_functions_stay_open_to_users(attack):
    admin, u1 = attack
    assert u1.execute("SELECT upper(s), length(s), abs(-x), x + 1, coalesce(NULL, x), [x][1], {'a': x}.a, "
                      "s LIKE 'q%', list_transform([x], lambda y: y * 2)[1], hash(s) = hash(s), "
                      "sum(x) OVER (), row_number() OVER (ORDER BY x), 'q'::VARCHAR, x::BIGINT, "
                      "if(x > 1, 'big', 'small'), unnest([x]), current_date IS NOT NULL, user "
                      "FROM pub ORDER BY x LIMIT 1").fetchall()[0][:4] == ("Q0", 2, 0, 1)
    assert u1.execute("SELECT count(*), string_agg(s, ',' ORDER BY s), median(x), random() < 2, "
                      "uuid() IS NOT NULL FROM pub").fetchall()[0][:3] == (5, "q0,q1,q2,q3,q4", 2.0)
    u1.execute("CREATE TABLE mine (id BIGINT DEFAULT 7, e ENUM('a', 'b'), made DATE DEFAULT current_date)")
    u1.execute("INSERT INTO mine (e) VALUES ('a')")
    assert u1.execute("SELECT id, e FROM mine").fetchall() == [(7, "a")]


def test_a_training_query_or_user_metric_may_not_call_administrator_functions(attack, tiny_model_path):
    admin, u1 = attack
    allow_base_model(admin, tiny_model_path)
    with pytest.raises(PermissionDenied, match="'nextval' does not exist or is for the administrator"):
        u1.execute("SELECT finetune('CREATE', 'ml.seq_bot', ?, "
                   "'SELECT s AS prompt, nextval(''seq'')::VARCHAR AS completion FROM pub', NULL, ?)",
                   [tiny_model_path, ONE_EPOCH]).fetchall()
    with pytest.raises(PermissionDenied, match="'current_setting' does not exist or is for the administrator"):
        u1.execute("SELECT finetune('EVALUATE', ?, 'SELECT s AS prompt, s AS completion FROM pub', ?)",
                   [tiny_model_path, json.dumps({"max_tokens": 2, "metrics": [
                       {"name": "leak", "sql": "length(current_setting('memory_limit'))"}]})]).fetchall()
    assert admin.execute("SELECT nextval('seq')").fetchall() == [(1,)]
    assert admin.execute("SELECT count(*) FROM duckdb_ft.jobs").fetchall() == [(0,)]


# ------------------------------------------------------------------------------------------ 4. smaller leaks

def test_errors_a_user_provokes_carry_no_session_id(attack):
    admin, u1 = attack
    ids = (u1.session.id, u1.session.engine.id)
    for sql in ("SELECT complete('m', 'p').x", "SELECT finetune('SHOW').x", "SELECT ft_execute('x').y",
                "SELECT try_complete('m', 'p', {'a': 1}).z", "SELECT complete(1, 2, 3, 4)",
                "SELECT snowflake.cortex.complete('m', 'p').x"):
        with pytest.raises(duckdb.Error) as e:
            u1.execute(sql).fetchall()
        assert not any(i in str(e.value) for i in ids), str(e.value)
    with pytest.raises(duckdb.Error) as e:
        u1.sql("SELECT complete('m', 'p').x")
    assert u1.session.id not in str(e.value)


@pytest.mark.slow
def test_export_tells_a_user_no_more_than_the_other_model_statements(attack, tiny_model_path, tmp_path):
    admin, u1 = attack
    job = admin.execute("SELECT finetune('CREATE', 'ml.private', ?, 'SELECT s AS prompt, s AS completion FROM pub', "
                        "NULL, ?)", [tiny_model_path, ONE_EPOCH]).fetchall()[0][0]
    assert duckdb_ft.wait(admin, job, 120) == "SUCCESS"
    messages = []
    for name in ("ml.private", "ml.nothing"):
        with pytest.raises(PermissionDenied, match="does not exist or OWNERSHIP is required") as e:
            duckdb_ft.export_model(u1, name, str(tmp_path / name))
        messages.append(str(e.value).replace(name, "M"))
    assert messages[0] == messages[1] and "admin" not in messages[0]
    with pytest.raises(duckdb_ft.NotFound, match="does not exist"):  # the administrator is told plainly
        duckdb_ft.export_model(admin, "ml.nothing", str(tmp_path / "n"))


def test_the_administrators_create_if_not_exists_over_a_users_table_is_an_error(attack):
    admin, u1 = attack
    u1.execute("CREATE TABLE mine (s VARCHAR)")
    u1.execute("CREATE VIEW my_view AS SELECT 1 AS x")
    for run in (lambda q: admin.execute(q), lambda q: admin.sql(q), lambda q: duckdb_ft.execute(admin, q)):
        with pytest.raises(duckdb_ft.AlreadyExists, match="'main.mine' exists and belongs to role 'attacker'"):
            run("CREATE TABLE IF NOT EXISTS mine (s VARCHAR, secret_note VARCHAR)")
        with pytest.raises(duckdb_ft.AlreadyExists, match="belongs to role 'attacker'"):
            run("CREATE VIEW IF NOT EXISTS my_view AS SELECT 2 AS x")
    admin.execute("CREATE TABLE IF NOT EXISTS pub (s VARCHAR)")  # its own (unowned) table: DuckDB's no-op
    admin.execute("CREATE TABLE IF NOT EXISTS fresh (s VARCHAR)")
    assert admin.execute("SELECT count(*) FROM duckdb_columns() WHERE table_name = 'mine'").fetchall() == [(1,)]


def test_a_user_reads_their_own_sweep_and_no_other(attack, tiny_model_path):
    admin, u1 = attack
    allow_base_model(admin, tiny_model_path)
    admin.execute("CREATE ROLE other").fetchall()
    admin.execute("GRANT ROLE other TO USER u2").fetchall()
    u2 = user_connection(admin, "u2")
    sweep = u1.execute("SELECT finetune('SWEEP', 'ml.swept', ?, 'SELECT s AS prompt, s AS completion FROM pub', "
                       "NULL, ?)", [tiny_model_path, json.dumps({"max_epochs": 1, "lora_r": [2, 4]})]).fetchall()[0][0]
    try:
        rows = u1.execute(f"SELECT model FROM finetune_sweep('{sweep}') ORDER BY model").fetchall()
        assert [r[0] for r in rows] == ["ml.swept_1", "ml.swept_2"]
        with pytest.raises(duckdb.Error, match="does not exist"):
            u2.execute(f"FROM finetune_sweep('{sweep}')").fetchall()
    finally:
        u1.execute("SELECT finetune('CANCEL', ?)", [sweep]).fetchall()
        u2.close()


# ------------------------------------------------------------------------------------------ 1. model folders

def base_model_refusals(u1, name):
    """Every way a user session names a base model; each must be refused with the one error."""
    q = "SELECT s AS prompt, s AS completion FROM pub"
    return [
        ("SELECT complete(?, 'hi')", [name]),
        ("SELECT complete(?, 'hi', '{\"max_tokens\": 1}')", [name]),
        ("SELECT finetune('EVALUATE', ?, ?, '{\"max_tokens\": 1}')", [name, q]),
        ("SELECT finetune('ESTIMATE', ?, ?)", [name, q]),
        ("SELECT finetune('CREATE', 'ml.stolen', ?, ?, NULL, ?)", [name, q, ONE_EPOCH]),
        ("FROM finetune_data_report(?, ?)", [name, q]),
    ]


@pytest.mark.slow
def test_a_user_cannot_name_a_folder_or_hub_id_as_a_base_model(attack, tiny_model_path, tmp_path):
    admin, u1 = attack
    empty = tmp_path / "no_config"
    empty.mkdir()
    names = [tiny_model_path, str(empty), str(tmp_path / "missing"), "~", "~/", "../", "../../etc",
             "HuggingFaceTB/SmolLM2-135M-Instruct", "not-a-model"]
    messages = set()
    for name in names:
        for sql, params in base_model_refusals(u1, name):
            with pytest.raises(PermissionDenied, match="base model .* does not exist or USAGE is required") as e:
                u1.execute(sql, params).fetchall()
            text = str(e.value).replace(repr(name.strip()), "N")
            assert "config.json" not in text and "folder" not in text and str(tmp_path) not in text, text
            messages.add(text)
        assert u1.execute("SELECT try_complete(?, 'hi')", [name]).fetchall() == [(None,)]
    assert len(messages) == 1, messages
    assert admin.execute("SELECT count(*) FROM duckdb_ft.jobs").fetchall() == [(0,)]


def test_a_registered_base_model_is_for_the_roles_granted_usage(attack, tiny_model_path):
    admin, u1 = attack
    with pytest.raises(PermissionDenied, match="CREATE BASE MODEL is for the administrator only"):
        u1.execute(f"CREATE BASE MODEL mine FROM '{tiny_model_path}'").fetchall()
    admin.execute(f"CREATE BASE MODEL tiny FROM '{tiny_model_path}'").fetchall()
    one = "SELECT complete('tiny', 'hi', '{\"max_tokens\": 1}')"
    denied(u1, one, match="base model 'tiny': it does not exist or USAGE is required")
    assert [r[0] for r in u1.execute("SHOW BASE MODELS").fetchall()] == ["smollm2-135m", "smollm2-135m-instruct"]
    admin.execute("GRANT USAGE ON BASE MODEL tiny TO ROLE attacker").fetchall()
    assert json.loads(u1.execute(one).fetchall()[0][0])["usage"]["completion_tokens"] <= 1
    assert ("tiny", "registered") in [r[:2] for r in u1.execute("SHOW BASE MODELS").fetchall()]
    assert ("tiny", tiny_model_path) in [r[:2] for r in admin.execute("SHOW BASE MODELS").fetchall()]
    with pytest.raises(PermissionDenied, match="administrator only"):
        u1.execute("GRANT USAGE ON BASE MODEL tiny TO ROLE public").fetchall()
    admin.execute("REVOKE USAGE ON BASE MODEL tiny FROM ROLE attacker").fetchall()
    denied(u1, one, match="base model 'tiny': it does not exist or USAGE is required")
    admin.execute("DROP BASE MODEL tiny").fetchall()
    assert admin.execute("SELECT count(*) FROM duckdb_ft.grants WHERE object_kind = 'BASE MODEL'").fetchall() == [(0,)]


def test_built_in_base_models_stay_open_to_every_role(attack):
    from duckdb_ft.governance.base_models import base_model_for
    from duckdb_ft.ml.models import BUILTIN
    admin, u1 = attack
    cur = admin.duckdb_connection.cursor()
    assert base_model_for(u1.session, cur, "smollm2-135m", BUILTIN) == "smollm2-135m"
    assert base_model_for(admin.session, cur, "/any/folder", BUILTIN) == "/any/folder"  # the administrator's


# ------------------------------------------------------------------------------------ 3. resource governance

def test_multi_machine_options_are_for_the_administrator(attack, tiny_model_path):
    admin, u1 = attack
    allow_base_model(admin, tiny_model_path)
    q = "SELECT s AS prompt, s AS completion FROM pub"
    for options in ({"nodes": 2, "rdzv_endpoint": "127.0.0.1:29999"}, {"rdzv_timeout": 86400},
                    {"rdzv_endpoint": "0.0.0.0:1"}):
        with pytest.raises(PermissionDenied, match="multi-machine options .* are for the administrator only"):
            u1.execute("SELECT finetune('CREATE', 'ml.hog', ?, ?, NULL, ?)",
                       [tiny_model_path, q, json.dumps({**options, "max_epochs": 1})]).fetchall()
    with pytest.raises(PermissionDenied, match="multi-machine options"):
        u1.execute("SELECT finetune('SWEEP', 'ml.hog', ?, ?, NULL, ?)",
                   [tiny_model_path, q, json.dumps({"rdzv_timeout": [300, 86400]})]).fetchall()
    assert admin.execute("SELECT count(*) FROM duckdb_ft.jobs").fetchall() == [(0,)]


def test_sql_match_runs_no_administrator_function_for_a_user():
    from duckdb_ft.evaluation.sqlmatch import Sandbox

    with Sandbox(pure_only=True) as box:  # a user's evaluation
        assert box.result("SELECT upper('a'), 1 + 1") == [("A", 2)]
        for sql in ("SELECT current_setting('threads')", "SELECT version()", "SELECT current_schema",
                    "SELECT nextval('s')", "SELECT no_such_function(1)"):
            assert box.result(sql) is None, sql
        assert not box.match("SELECT current_setting('threads')", "SELECT '1'")
    with Sandbox() as box:  # the administrator's: DuckDB as it is
        assert box.result("SELECT version() IS NOT NULL") == [(True,)]
