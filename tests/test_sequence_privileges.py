"""Sequences reached through the administrator's tables and views need USAGE on the sequence (issue 30).

The user is conftest.setup_attack_db's u1 (role ``attacker``); the administrator owns sequence ``s`` and table
``t`` whose default, CHECK and generated column call it, and grants INSERT/UPDATE on ``t``.
"""

from __future__ import annotations

import pytest

import duckdb_ft
from duckdb_ft.errors import NotFound, PermissionDenied
from conftest import denied, setup_attack_db, user_connection

SEQ_DENIED = r"Insufficient privileges to operate on sequence '{}': USAGE is required \(current role: attacker\)"


@pytest.fixture
def db():
    admin = duckdb_ft.connect()
    setup_attack_db(admin)
    for sql in ["CREATE SEQUENCE s", "CREATE SEQUENCE other_s",
                "CREATE TABLE t (id INTEGER DEFAULT nextval('s'), x TEXT)",
                "CREATE TABLE checked (x INTEGER CHECK (x < nextval('s')))",
                "CREATE TABLE generated (x INTEGER, g BIGINT GENERATED ALWAYS AS (x + currval('s')))",
                "CREATE MACRO next_id() AS nextval('s')",
                "CREATE TABLE via_macro (id BIGINT DEFAULT next_id(), x TEXT)",
                "CREATE TABLE plain (x TEXT DEFAULT 'none')",
                "CREATE VIEW v_ids AS SELECT s, nextval('s') AS n FROM pub",
                "CREATE VIEW v_over_ids AS SELECT * FROM v_ids",
                "CREATE VIEW v_settings AS SELECT current_database() AS db, version() AS v",
                "SELECT nextval('s')"]:  # so currval has a value
        admin.execute(sql).fetchall()
    for sql in ["GRANT INSERT, UPDATE ON TABLE t TO ROLE attacker",
                "GRANT INSERT, UPDATE, SELECT ON TABLE checked TO ROLE attacker",
                "GRANT INSERT ON TABLE generated TO ROLE attacker",
                "GRANT INSERT ON TABLE via_macro TO ROLE attacker",
                "GRANT INSERT ON TABLE plain TO ROLE attacker",
                "GRANT SELECT ON VIEW v_ids TO ROLE attacker", "GRANT SELECT ON VIEW v_over_ids TO ROLE attacker",
                "GRANT SELECT ON VIEW v_settings TO ROLE attacker"]:
        admin.execute(sql).fetchall()
    u1 = user_connection(admin, "u1")
    yield admin, u1
    u1.close()
    admin.close()


def last_value(admin, name="s"):
    return admin.execute("SELECT last_value FROM duckdb_sequences() WHERE sequence_name = ?", [name]).fetchall()[0][0]


def counts(admin):
    return [admin.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
            for t in ("t", "checked", "generated", "via_macro")]


def test_a_users_insert_through_a_default_does_not_advance_a_sequence_without_usage(db):
    admin, u1 = db
    before, rows = last_value(admin), counts(admin)
    for sql in ["INSERT INTO t (x) VALUES ('a')", "INSERT INTO t (x) SELECT s FROM pub",
                "INSERT INTO t VALUES (5, 'explicit id')", "INSERT INTO t DEFAULT VALUES",
                "INSERT INTO checked VALUES (0)", "INSERT INTO generated (x) VALUES (1)",
                "INSERT INTO via_macro (x) VALUES ('a')"]:
        denied(u1, sql, match=SEQ_DENIED.format("main.s"))
    assert last_value(admin) == before and counts(admin) == rows


def test_a_users_update_of_a_table_whose_check_or_default_calls_a_sequence_needs_usage(db):
    admin, u1 = db
    admin.execute("INSERT INTO checked VALUES (0)")
    before = last_value(admin)
    denied(u1, "UPDATE checked SET x = -1", match=SEQ_DENIED.format("main.s"))
    denied(u1, "UPDATE t SET x = 'b'", match=SEQ_DENIED.format("main.s"))
    assert last_value(admin) == before
    assert admin.execute("FROM checked").fetchall() == [(0,)]


def test_usage_on_the_sequence_lets_the_users_insert_advance_it(db):
    admin, u1 = db
    assert admin.execute("GRANT USAGE ON SEQUENCE s TO ROLE attacker").fetchall()
    before = last_value(admin)
    u1.execute("INSERT INTO t (x) VALUES ('a')")
    u1.execute("INSERT INTO via_macro (x) VALUES ('a')")
    u1.execute("UPDATE checked SET x = -1")
    assert last_value(admin) == before + 2
    assert admin.execute("SELECT id, x FROM t").fetchall() == [(before + 1, "a")]
    admin.execute("REVOKE USAGE ON SEQUENCE s FROM ROLE attacker").fetchall()
    denied(u1, "INSERT INTO t (x) VALUES ('b')", match=SEQ_DENIED.format("main.s"))
    assert last_value(admin) == before + 2


def test_usage_on_another_sequence_is_not_usage_on_this_one(db):
    admin, u1 = db
    admin.execute("GRANT USAGE ON SEQUENCE other_s TO ROLE attacker").fetchall()
    denied(u1, "INSERT INTO t (x) VALUES ('a')", match=SEQ_DENIED.format("main.s"))


def test_a_table_without_sequences_needs_only_the_table_privilege(db):
    admin, u1 = db
    u1.execute("INSERT INTO plain DEFAULT VALUES")
    assert admin.execute("FROM plain").fetchall() == [("none",)]


def test_usage_on_a_sequence_does_not_let_the_user_call_nextval_itself(db):
    admin, u1 = db
    admin.execute("GRANT USAGE ON SEQUENCE s TO ROLE attacker").fetchall()
    before = last_value(admin)
    denied(u1, "SELECT nextval('s')", match="'nextval' does not exist or is for the administrator only")
    denied(u1, "INSERT INTO t VALUES (nextval('s'), 'a')", match="'nextval' does not exist or is for the admin")
    assert last_value(admin) == before


def test_reading_a_view_over_a_sequence_needs_usage_on_it(db):
    admin, u1 = db
    before = last_value(admin)
    for sql in ["FROM v_ids", "SELECT count(*) FROM v_over_ids", "CREATE TABLE copied AS FROM v_ids",
                "INSERT INTO plain SELECT s FROM v_ids"]:
        denied(u1, sql, match=SEQ_DENIED.format("main.s"))
    assert last_value(admin) == before
    assert admin.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'copied'").fetchall() == [(0,)]
    admin.execute("GRANT USAGE ON SEQUENCE s TO ROLE attacker").fetchall()
    assert len(u1.execute("FROM v_over_ids").fetchall()) == 5
    assert last_value(admin) == before + 5


def test_a_granted_views_other_functions_run_as_its_owner_wrote_them(db):
    """A view's body is the owner's: functions off the allow-list run inside it for a role granted the view
    (PostgreSQL runs a view with its owner's rights); only sequences need the reader's USAGE."""
    admin, u1 = db
    assert u1.execute("SELECT db IS NOT NULL, v IS NOT NULL FROM v_settings").fetchall() == [(True, True)]
    denied(u1, "SELECT current_database()", match="'current_database' does not exist or is for the administrator")


def test_a_missing_sequence_and_a_forbidden_one_give_the_same_error(db):
    admin, u1 = db
    admin.execute("CREATE SEQUENCE no_such_seq")
    admin.execute("CREATE VIEW v_missing AS SELECT 1 AS one WHERE false AND nextval('no_such_seq') > 0")
    admin.execute("DROP SEQUENCE no_such_seq")  # the view stays, naming a sequence that is gone
    admin.execute("GRANT SELECT ON VIEW v_missing TO ROLE attacker").fetchall()
    denied(u1, "FROM v_missing", match=SEQ_DENIED.format("main.no_such_seq"))
    denied(u1, "FROM v_ids", match=SEQ_DENIED.format("main.s"))


def test_a_sequence_named_by_an_expression_is_refused(db):
    """DuckDB folds a constant expression into the sequence's name; the parse cannot name it, so it is refused."""
    admin, u1 = db
    admin.execute("CREATE VIEW v_dyn AS SELECT nextval('' || 's') AS n")
    admin.execute("CREATE TABLE dyn (id BIGINT DEFAULT nextval(lower('S')), x TEXT)")
    admin.execute("GRANT SELECT ON VIEW v_dyn TO ROLE attacker").fetchall()
    admin.execute("GRANT INSERT ON TABLE dyn TO ROLE attacker").fetchall()
    admin.execute("GRANT USAGE ON SEQUENCE s TO ROLE attacker").fetchall()
    before = last_value(admin)
    denied(u1, "FROM v_dyn", match="sequence '<computed name>': USAGE is required")
    denied(u1, "INSERT INTO dyn (x) VALUES ('a')", match="sequence '<computed name>': USAGE is required")
    assert last_value(admin) == before


def test_a_sequence_in_another_schema_is_resolved_as_duckdb_does(db):
    """An unqualified name in a table of schema ml is ml's sequence when there is one, else main's."""
    admin, u1 = db
    for sql in ["CREATE SEQUENCE ml.s START 500", "CREATE TABLE ml.t2 (id BIGINT DEFAULT nextval('s'), x TEXT)",
                "GRANT INSERT ON TABLE ml.t2 TO ROLE attacker", "GRANT USAGE ON SEQUENCE main.s TO ROLE attacker"]:
        admin.execute(sql).fetchall()
    denied(u1, "INSERT INTO ml.t2 (x) VALUES ('a')", match=SEQ_DENIED.format("ml.s"))
    admin.execute("GRANT USAGE ON SEQUENCE ml.s TO ROLE attacker").fetchall()
    u1.execute("INSERT INTO ml.t2 (x) VALUES ('a')")
    assert admin.execute("FROM ml.t2").fetchall() == [(500, "a")]


def test_only_the_administrator_grants_usage_on_a_sequence(db):
    admin, u1 = db
    denied(u1, "GRANT USAGE ON SEQUENCE s TO ROLE attacker", match="for the administrator only")
    denied(u1, "GRANT USAGE ON SEQUENCE no_such_seq TO ROLE attacker", match="for the administrator only")
    with pytest.raises(NotFound, match="sequence 'no_such_seq' does not exist"):
        admin.execute("GRANT USAGE ON SEQUENCE no_such_seq TO ROLE attacker").fetchall()
    with pytest.raises(Exception, match="privilege SELECT does not apply to sequence"):
        admin.execute("GRANT SELECT ON SEQUENCE s TO ROLE attacker").fetchall()
    admin.execute("GRANT USAGE ON SEQUENCE s TO ROLE attacker").fetchall()
    shown = admin.execute("SHOW GRANTS ON SEQUENCE s").fetchall()
    assert ("USAGE", "SEQUENCE", "main.s", "ROLE", "attacker") in shown


def test_a_dropped_sequences_grants_do_not_pass_to_a_new_one_of_the_same_name(db):
    admin, u1 = db
    admin.execute("CREATE SEQUENCE fresh").fetchall()
    admin.execute("GRANT USAGE ON SEQUENCE fresh TO ROLE attacker").fetchall()
    admin.execute("DROP SEQUENCE fresh").fetchall()
    admin.execute("CREATE SEQUENCE fresh").fetchall()
    admin.execute("CREATE TABLE uses_fresh (id BIGINT DEFAULT nextval('fresh'))").fetchall()
    admin.execute("GRANT INSERT ON TABLE uses_fresh TO ROLE attacker").fetchall()
    denied(u1, "INSERT INTO uses_fresh DEFAULT VALUES", match=SEQ_DENIED.format("main.fresh"))
    with pytest.raises(PermissionDenied):
        u1.execute("INSERT INTO uses_fresh VALUES (1)").fetchall()
