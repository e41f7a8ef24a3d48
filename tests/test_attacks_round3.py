"""Attacks of the third privileges review (issue 30), each a test named after the behaviour it protects.

The attacker is conftest.setup_attack_db's user session (USAGE on ``main``, SELECT on ``pub``, INSERT on ``logt``, CREATE
MODEL on ``ml``, CREATE TABLE/VIEW on ``main``); the administrator also owns a sequence and an enum type.
"""

from __future__ import annotations

import json

import pytest

import duckdb_ft
from duckdb_ft.errors import PermissionDenied
from conftest import ONE_EPOCH, denied, setup_attack_db, user_connection


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
