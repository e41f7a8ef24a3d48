"""Every cursor of an installed connection sees duckdb-ft's functions, as its parent's session: a raw DuckDB
connection's ``cursor()`` (what dbt-duckdb runs models on), ``duckdb_ft.install(con).cursor()``, a cursor taken in
another thread, ``duplicate()`` and a cursor's cursor; a user's cursor stays that user, in the role it had."""

from __future__ import annotations

import gc
import json
import threading

import duckdb
import pytest

import duckdb_ft
from duckdb_ft.surface import cursors

OPTS = '{"max_tokens": 2, "temperature": 0}'


def _runs_everything(cur, model):
    """COMPLETE, TRY_COMPLETE, FINETUNE and the Cortex names all answer on ``cur``."""
    answer = json.loads(cur.execute(f"SELECT complete(?, 'hi', '{OPTS}')", [model]).fetchall()[0][0])
    assert answer["choices"][0]["messages"] is not None
    assert cur.execute("SELECT try_complete('no such model', 'hi')").fetchall() == [(None,)]
    assert cur.execute("SELECT finetune('SHOW')").fetchall() == [("[]",)]
    assert cur.execute("SELECT count(*) FROM finetune('SHOW')").fetchall() == [(0,)]
    cortex = cur.execute(f"SELECT snowflake.cortex.complete(?, 'hi', '{OPTS}')", [model]).fetchall()[0][0]
    assert json.loads(cortex)["choices"] == answer["choices"]
    assert cur.execute("SELECT SNOWFLAKE.CORTEX.FINETUNE('SHOW')").fetchall() == [("[]",)]


def test_raw_installed_and_thread_cursors_run_complete_finetune_and_the_cortex_names(tiny_model_path):
    con = duckdb.connect()
    installed = duckdb_ft.install(con)
    _runs_everything(con.cursor(), tiny_model_path)
    _runs_everything(installed.cursor(), tiny_model_path)
    _runs_everything(con.duplicate(), tiny_model_path)
    _runs_everything(con.cursor().cursor(), tiny_model_path)  # a cursor's cursor
    failures = []

    def in_thread():
        try:
            _runs_everything(con.cursor(), tiny_model_path)
        except BaseException as e:  # reported to the test's thread
            failures.append(e)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert failures == []
    con.close()


def test_a_cursor_of_a_connection_without_duckdb_ft_has_no_functions():
    plain = duckdb.connect()
    duckdb_ft.install(duckdb.connect())  # installed elsewhere in the process: this connection stays DuckDB's own
    with pytest.raises(duckdb.CatalogException, match="complete"):
        plain.cursor().execute("SELECT complete('m', 'hi')")
    assert cursors.session_of(plain.cursor()) is None


def test_a_users_cursor_stays_that_user_never_the_administrator(tiny_model_path):
    admin = duckdb_ft.connect()
    admin.execute("CREATE TABLE secret AS SELECT 1 AS x").fetchall()
    for sql in ["CREATE ROLE analyst", "CREATE ROLE reader", "GRANT ROLE analyst TO USER alice",
                "GRANT ROLE reader TO USER alice"]:
        admin.execute(sql).fetchall()
    raw = duckdb_ft.install(admin.duckdb_connection.cursor(), user="alice")
    duckdb_ft.execute(raw, "USE ROLE reader")
    alice = cursors.session_of(raw)
    seen = []

    def in_thread():
        seen.append(cursors.session_of(raw.cursor()))

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    for cur in [raw.cursor(), raw.cursor().cursor(), raw.duplicate()]:
        session = cursors.session_of(cur)
        assert (session.user, session.role) == ("alice", "reader") and session.id != alice.id
        with pytest.raises(duckdb.Error, match="Insufficient privileges"):  # the administrator could
            cur.execute("SELECT ft_execute('CREATE ROLE intruder')").fetchall()
        with pytest.raises(duckdb.Error, match="base model|not allowed|does not exist"):  # a folder: admin only
            cur.execute(f"SELECT complete(?, 'hi', '{OPTS}')", [tiny_model_path]).fetchall()
    assert [(s.user, s.role) for s in seen] == [("alice", "reader")]
    assert admin.cursor().session.user is None  # and the administrator's cursor is the administrator
    assert "intruder" not in str(admin.execute("SHOW ROLES").fetchall())
    admin.close()


def test_a_user_connections_cursor_is_the_same_user_and_still_locked_down(limited):
    admin, u1 = limited
    cur = u1.cursor()
    assert (cur.session.user, cur.session.role) == ("u1", "attacker")
    with pytest.raises(duckdb_ft.PermissionDenied, match="Insufficient privileges"):
        cur.execute("SELECT * FROM secret").fetchall()
    with pytest.raises(duckdb_ft.PermissionDenied):
        cur.duckdb_connection  # noqa: B018  (the raw connection stays out of reach)
    assert cur.execute("SELECT count(*) FROM pub").fetchall() == [(5,)]


def test_a_cursors_session_leaves_the_engine_when_the_cursor_is_collected():
    con = duckdb.connect()
    duckdb_ft.install(con)
    engine = cursors.session_of(con).engine
    before = len(engine.sessions)
    cur = con.cursor()
    assert len(engine.sessions) == before + 1
    del cur
    gc.collect()
    assert len(engine.sessions) == before
    con.close()
