"""Roles, grants and privilege checks: a matrix of roles × privileged actions, each allowed or denied, and
nothing changed by a denial."""

from __future__ import annotations

import json
import shutil

import pytest

import duckdb_ft
from conftest import ONE_EPOCH, PRIVILEGE_MATRIX, PRIVILEGE_QUERY as GOOD_Q, PRIVILEGE_USERS
from duckdb_ft.errors import PermissionDenied


def state(admin):
    """Everything a denied call must leave as it was: the catalog and the users' tables."""
    out = {t: admin.execute(f"SELECT count(*) FROM duckdb_ft.{t}").fetchall()[0][0]
           for t in ("jobs", "job_rows", "models", "grants", "roles", "role_members", "object_owners")}
    out["owners"] = admin.execute("SELECT schema_name, name, owner FROM duckdb_ft.models ORDER BY 1, 2").fetchall()
    for t in ("main.faq", "main.secret"):
        out[t] = admin.execute(f"SELECT count(*), sum(hash(q, a)) FROM {t}").fetchall()
    out["tables"] = admin.execute("SELECT schema_name, table_name FROM duckdb_tables() ORDER BY 1, 2").fetchall()
    return out


class Sessions(dict):
    """``db[user]``: a connection of that user (``db["admin"]``: the administrator's), opened on first use."""

    def __missing__(self, user):
        con = duckdb_ft.connect(self["path"]) if user == "admin" else duckdb_ft.connect(self["path"], user=user)
        self[user] = con
        return con


@pytest.fixture
def db(privilege_shop, tmp_path, tiny_model_path):
    """A copy of the privilege matrix's database (conftest.privilege_shop) for one test, which may change it as it
    likes; its sessions by user."""
    path = str(tmp_path / "shop.duckdb")
    shutil.copyfile(privilege_shop[0], path)
    sessions = Sessions(path=path, job=privilege_shop[1], base=tiny_model_path)
    sessions["admin"]  # noqa: B018 - opened first, closed last
    yield sessions
    for user in [u for u in sessions if u not in ("path", "job", "base", "admin")] + ["admin"]:
        sessions[user].close()


def attempt(con, sql, *params):
    return con.execute(sql, list(params)).fetchall()


@pytest.mark.parametrize("user_index, user", list(enumerate(PRIVILEGE_USERS)))
@pytest.mark.parametrize("action, sql, allowed, message, undo", PRIVILEGE_MATRIX,
                         ids=[m[0] for m in PRIVILEGE_MATRIX])
def test_privilege_matrix(db, action, sql, allowed, message, undo, user_index, user):
    con, admin = db[user], db["admin"]
    text = sql.format(u=user, base=db["base"], opts=ONE_EPOCH)
    before = state(admin)
    if allowed[user_index]:
        rows = attempt(con, text)
        assert rows, action
        if action.startswith("finetune"):
            assert duckdb_ft.wait(admin, rows[0][0]) == "SUCCESS"
        if undo:
            attempt(admin, undo)
        if action == "use a role not granted":
            attempt(con, "USE ROLE analyst")
    else:
        with pytest.raises(Exception, match=message) as err:
            attempt(con, text)
        assert "Insufficient privileges" in str(err.value) or "not granted" in str(err.value)
        assert state(admin) == before, f"{action} was denied but changed something"


def test_jobs_are_visible_and_cancellable_only_by_their_owner(db):
    alice, bob, eve, admin = db["alice"], db["bob"], db["eve"], db["admin"]
    job = attempt(alice, "SELECT finetune('CREATE', 'ml.visible', ?, ?, NULL, ?)", db["base"], GOOD_Q,
                  json.dumps({"max_epochs": 10, "batch_size": 1}))[0][0]
    assert job in attempt(alice, "SELECT finetune('SHOW')")[0][0]
    assert job in attempt(admin, "SELECT finetune('SHOW')")[0][0]
    for other in (bob, eve):
        assert job not in attempt(other, "SELECT finetune('SHOW')")[0][0]
        with pytest.raises(Exception, match="does not exist"):
            attempt(other, "SELECT finetune('DESCRIBE', ?)", job)
        with pytest.raises(Exception, match="does not exist"):
            attempt(other, "SELECT finetune('CANCEL', ?)", job)
    assert attempt(db["carol"], "SELECT finetune('DESCRIBE', ?)", job)  # senior inherits analyst
    assert attempt(alice, "SELECT finetune('CANCEL', ?)", job) == [(f"Canceled fine-tuning job: {job}",)]
    duckdb_ft.wait(admin, job)


def test_drop_model_needs_ownership(db):
    admin, alice, bob = db["admin"], db["alice"], db["bob"]
    job = attempt(alice, "SELECT finetune('CREATE', 'ml.dropme', ?, ?, NULL, ?)", db["base"], GOOD_Q, ONE_EPOCH)[0][0]
    assert duckdb_ft.wait(admin, job) == "SUCCESS"
    attempt(alice, "GRANT USAGE ON MODEL ml.dropme TO ROLE viewer")
    before = state(admin)
    with pytest.raises(PermissionDenied, match="DROP MODEL needs OWNERSHIP"):
        attempt(bob, "DROP MODEL ml.dropme")
    assert state(admin) == before
    assert attempt(alice, "DROP MODEL ml.dropme") == [("ml.dropme successfully dropped.",)]
    assert attempt(admin, "SELECT count(*) FROM duckdb_ft.grants WHERE object_name = 'ml.dropme'") == [(0,)]
    assert attempt(alice, "DROP MODEL IF EXISTS ml.dropme")


def test_revoke_takes_effect_on_the_next_call(db):
    admin, bob = db["admin"], db["bob"]
    assert attempt(bob, "SELECT complete('ml.shared_bot', 'hi', '{\"max_tokens\": 1}') IS NOT NULL") == [(True,)]
    attempt(admin, "REVOKE USAGE ON MODEL ml.shared_bot FROM ROLE viewer")
    try:
        with pytest.raises(Exception, match="USAGE is required"):
            attempt(bob, "SELECT complete('ml.shared_bot', 'hi')")
        assert attempt(bob, "SELECT try_complete('ml.shared_bot', 'hi')") == [(None,)]
    finally:
        attempt(admin, "GRANT USAGE ON MODEL ml.shared_bot TO ROLE viewer")


def test_role_hierarchy(db):
    carol, admin = db["carol"], db["admin"]
    assert carol.session.role == "senior"
    assert attempt(carol, "SELECT count(*) FROM faq") == [(20,)]  # analyst's grant, through senior
    attempt(admin, "REVOKE ROLE analyst FROM ROLE senior")
    try:
        with pytest.raises(PermissionDenied):
            attempt(carol, "SELECT count(*) FROM faq")
    finally:
        attempt(admin, "GRANT ROLE analyst TO ROLE senior")


def test_administrator_can_act_as_a_role(db):
    admin = db["admin"]
    attempt(admin, "USE ROLE viewer")
    try:
        with pytest.raises(PermissionDenied, match="current role: viewer"):
            attempt(admin, "SELECT count(*) FROM secret")
    finally:
        attempt(admin, "USE ROLE admin")
    assert attempt(admin, "SELECT count(*) FROM secret") == [(20,)]


def test_user_session_cannot_reach_the_raw_connection(db):
    alice = db["alice"]
    for name in ("table", "read_csv", "register", "from_arrow", "install_extension"):
        with pytest.raises(PermissionDenied):
            getattr(alice, name)
    with pytest.raises(PermissionDenied):
        alice.duckdb_connection
    rel = alice.sql("SELECT * FROM faq")
    with pytest.raises(Exception):  # a detached relation: the database is not behind it
        rel.query("r", "SELECT * FROM secret").fetchall()


def test_show_grants_and_roles(db):
    admin, alice = db["admin"], db["alice"]
    roles = [r[0] for r in attempt(admin, "SHOW ROLES")]
    assert {"admin", "public", "analyst", "viewer", "outsider", "senior"} <= set(roles)
    grants = attempt(admin, "SHOW GRANTS TO ROLE viewer")
    assert ("USAGE", "MODEL", "ml.shared_bot", "ROLE", "viewer") in grants
    on_model = attempt(admin, "SHOW GRANTS ON MODEL ml.shared_bot")
    assert on_model[0] == ("OWNERSHIP", "MODEL", "ml.shared_bot", "ROLE", "analyst")
    assert all(g[4] in ("analyst", "public") for g in attempt(alice, "SHOW GRANTS"))
    assert [m[1] for m in attempt(db["bob"], "SHOW MODELS IN SCHEMA ml")] == ["shared_bot"]
    assert attempt(db["eve"], "SHOW MODELS") == []


def test_bad_statements_are_clear_errors(db):
    admin = db["admin"]
    with pytest.raises(Exception, match="expected a privilege"):
        attempt(admin, "GRANT FLY ON TABLE faq TO ROLE analyst")
    with pytest.raises(Exception, match="role 'nobody' does not exist"):
        attempt(admin, "GRANT SELECT ON TABLE faq TO ROLE nobody")
    with pytest.raises(Exception, match="table 'main.nope' does not exist"):
        attempt(admin, "GRANT SELECT ON TABLE nope TO ROLE analyst")
    with pytest.raises(Exception, match="privilege USAGE does not apply to table"):
        attempt(admin, "GRANT USAGE ON TABLE faq TO ROLE analyst")
    with pytest.raises(Exception, match="cycle"):
        attempt(admin, "GRANT ROLE senior TO ROLE analyst")
    assert attempt(admin, "SELECT ft_execute('SHOW ROLES') LIKE '%analyst%'") == [(True,)]


@pytest.mark.slow
def test_privileges_walkthrough_script_runs_in_the_shell(sql_script_run):
    """sql/privileges.sql, through the shell's script mode (on the tiny model, for speed; the run
    tests/test_sql_scripts.py checks too, made once: conftest's ``sql_script_run``)."""
    run = sql_script_run("privileges.sql")
    out = run["stdout"] + run["stderr"]
    assert run["returncode"] == 0, out
    assert "Error" not in out, out
    assert "USAGE on model ml.support_bot granted to role viewer." in out
    for column in ("viewer_can_complete", "revoked"):
        block = out[out.index(f"│ {column} │"):]
        assert block.split("\n")[3].strip("│ ") == "true", block[:300]
    con = duckdb_ft.connect(run["database"], read_only=True)
    assert con.execute("SELECT owner FROM duckdb_ft.models WHERE name = 'support_bot'").fetchall() == [("analyst",)]
    con.close()
