"""One table per extension point, and its users agree with it: EVALUATE's metrics, COMPLETE's options, the
statements (DuckDB's statement kinds, duckdb-ft's own statements and SHOW forms) and the privileges. Each test
fails when an entry is added to a table but not to what reads it (the stored rows, the columns, the batching key,
the README), or the other way round."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import duckdb
import pytest

import duckdb_ft
from duckdb_ft.catalog import evaluations as evaldb, migrations
from duckdb_ft.evaluation import metrics as M

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _section(title: str) -> str:
    """The README's text under a ``## title`` heading, up to the next ``## `` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


# ---------------------------------------------------------------------------------------------------- metrics


def _dicts(con, sql: str) -> list[dict]:
    cur = con.execute(sql)
    columns = [d[0] for d in cur.description]
    return [dict(zip(columns, r)) for r in cur.fetchall()]


def _old_catalog(path: str, upto: str) -> duckdb.DuckDBPyConnection:
    """A database whose catalog has the migrations before ``upto`` only (as an older duckdb-ft left it)."""
    raw = duckdb.connect(path)
    raw.execute("CREATE SCHEMA duckdb_ft")
    raw.execute("CREATE TABLE duckdb_ft.migrations (name VARCHAR PRIMARY KEY, applied_on BIGINT)")
    for m in migrations.MIGRATIONS:
        if m.__name__ == upto:
            break
        m(raw)
        raw.execute("INSERT INTO duckdb_ft.migrations VALUES (?, 0)", [m.__name__])
    return raw


def test_every_metric_has_a_scorer_and_a_need():
    scoring = M.Scoring(ids=["1", "2"], prompts=["p", "q"], refs=["a b", '{"x": 1}'], preds=["a b", None])
    for m in M.BUILTIN.values():
        assert callable(m.score) and m.needs in (M.TEXTS, M.SANDBOX, M.MODEL, M.SCHEMA), m.name
        assert m.corpus in ("mean", "bleu", "chrf") and m.sql is None, m.name
        if m.needs == M.TEXTS:
            got = m.score(scoring)
            assert len(got) == 2 and all(isinstance(v, (int, float)) for v in got), m.name
    assert M.DEFAULT and set(M.DEFAULT) <= set(M.BUILTIN)


def test_every_metric_is_stored_and_shown_as_a_column_of_finetune_evaluation(tmp_path):
    path = str(tmp_path / "scores.duckdb")
    raw = duckdb.connect(path)
    migrations.migrate(raw)
    scores = {name: float(k) + 0.5 for k, name in enumerate(M.BUILTIN)}
    evaldb.insert(raw, {"id": "ev_all", "owner": "admin", "models": json.dumps(["m"]), "query": "SELECT 1",
                        "options": "{}", "status": "SUCCESS", "progress": 1.0, "rows": 1, "skipped_rows": 0,
                        "created_on": 0})
    evaldb.insert_rows(raw, [{"evaluation_id": "ev_all", "model": "m", "idx": 0, "id": "1", "prompt": "p",
                              "completion": "c", "prediction": "c", "scores": scores,
                              "user_metrics": json.dumps({"short": 1.0}), "prompt_tokens": 1,
                              "completion_tokens": 1, "latency_ms": 1.0}])
    raw.close()
    con = duckdb_ft.connect(path)
    try:
        got = _dicts(con, "FROM finetune_evaluation('ev_all')")
    finally:
        con.close()
    assert len(got) == 1
    assert {name: got[0][name] for name in M.BUILTIN} == scores
    assert got[0]["user_metrics"] == {"short": 1.0}


def test_scores_stored_in_a_column_per_metric_move_into_the_map(tmp_path):
    path = str(tmp_path / "old.duckdb")
    raw = _old_catalog(path, "m014_evaluation_scores")
    raw.execute("INSERT INTO duckdb_ft.evaluations (id, owner, models, query, options, status, created_on) "
                "VALUES ('ev_old', 'admin', '[\"m\"]', 'SELECT 1', '{}', 'SUCCESS', 0)")
    raw.execute("""INSERT INTO duckdb_ft.evaluation_rows (evaluation_id, model, idx, id, prompt, completion,
                   prediction, exact_match, "contains", bleu, completion_loss, user_metrics, prompt_tokens,
                   completion_tokens, latency_ms)
                   VALUES ('ev_old', 'm', 0, '1', 'p', 'c', 'c', 1.0, NULL, 42.5, 0.25, '{"short": 0.0}', 3, 4, 5.0),
                          ('ev_old', 'm', 1, '2', 'q', 'd', 'e', 0.0, NULL, 0.0, 1.5, NULL, 3, 4, 5.0)""")
    raw.close()
    con = duckdb_ft.connect(path)  # migrates
    try:
        stored = con.execute("SELECT idx, scores FROM duckdb_ft.evaluation_rows ORDER BY idx").fetchall()
        got = _dicts(con, "FROM finetune_evaluation('ev_old')")
    finally:
        con.close()
    assert stored == [(0, {"exact_match": 1.0, "bleu": 42.5, "completion_loss": 0.25}),
                      (1, {"exact_match": 0.0, "bleu": 0.0, "completion_loss": 1.5})]
    assert [(r["exact_match"], r["bleu"], r["completion_loss"], r["contains"], r["user_metrics"]) for r in got] == \
        [(1.0, 42.5, 0.25, None, {"short": 0.0}), (0.0, 0.0, 1.5, None, None)]


def test_every_metric_is_documented_in_the_readme_and_only_those():
    section = _section("EVALUATE")
    table = set(re.findall(r"^  \| `([a-z0-9_]+)`(?:, `([a-z0-9_]+)`)? \|", section, re.M))
    documented = {name for row in table for name in row if name}
    assert documented == set(M.BUILTIN), "README's metric table and metrics.BUILTIN differ"
    default = re.search(r"default `([^`]+)`", section.replace("\n  ", " ")).group(1)
    assert default.split(", ") == M.DEFAULT, "README's default metrics and metrics.DEFAULT differ"


# ------------------------------------------------------------------------------------------------ COMPLETE options


def test_every_complete_option_is_in_the_batching_key_or_marked_as_not_in_it():
    from duckdb_ft import options
    from duckdb_ft.ml import complete
    from duckdb_ft.options import CompleteOptions

    fields = dataclasses.fields(CompleteOptions)
    base = CompleteOptions()
    for f in fields:
        assert f.metadata.get("batching") in (options.KEY, options.PER_ROW, options.NONE), f.name
        assert callable(f.metadata.get("check")), f.name
        changed = dataclasses.replace(base, **{f.name: object()}).batch_key() != base.batch_key()
        assert changed == (f.metadata["batching"] == options.KEY), f"{f.name}: batch_key() and its marking differ"
    # PER_ROW options are applied to each row on its own, each in its own way: max_tokens as Request.max_new (in
    # the key), response_format as Request.grammar (each row's logits masked alone)
    assert {f.name for f in fields if f.metadata["batching"] == options.PER_ROW} == {"max_tokens", "response_format"}
    source = __import__("inspect").getsource(complete._generate_unique)
    assert "batch_key()" in source and "r.max_new" in source and "r.grammar" in source, \
        "COMPLETE's batches must key on batch_key()"
    with pytest.raises(duckdb_ft.InvalidArgument) as err:
        CompleteOptions.parse('{"bogus": 1}')
    assert all(f.name in str(err.value) for f in fields)


def test_every_complete_option_is_documented():
    section = _section("COMPLETE")
    from duckdb_ft.options import CompleteOptions

    for f in dataclasses.fields(CompleteOptions):
        assert f"`{f.name}`" in section, f"COMPLETE option {f.name} is not in the README's COMPLETE section"


# ------------------------------------------------------------------------------------------------ statements


def test_every_statement_type_duckdb_names_is_checked_or_for_the_administrator():
    from duckdb_ft.governance import authorize

    kinds = set(duckdb.StatementType.__members__)
    assert not set(authorize.STATEMENTS) & set(authorize.ADMIN_ONLY)
    assert set(authorize.STATEMENTS) | set(authorize.ADMIN_ONLY) == kinds, \
        "DuckDB's statement types changed: add each new one to authorize.STATEMENTS or ADMIN_ONLY"


@pytest.fixture
def admin_and_user(tmp_path):
    """A database file with table t, view v, schema s, and role r (USAGE on main, ALL on t) of user u."""
    path = str(tmp_path / "db.duckdb")
    admin = duckdb_ft.connect(path)
    for sql in ["CREATE TABLE t AS SELECT 1 AS a", "CREATE VIEW v AS SELECT a FROM t", "CREATE SCHEMA s",
                "CREATE ROLE r", "GRANT USAGE ON SCHEMA main TO ROLE r", "GRANT ALL ON TABLE t TO ROLE r",
                "GRANT ROLE r TO USER u"]:
        admin.execute(sql).fetchall()
    user = duckdb_ft.connect(path, user="u")
    yield admin, user, tmp_path
    user.close()
    admin.close()


def test_statement_types_for_the_administrator_are_denied_to_a_user(admin_and_user):
    from duckdb_ft.governance import authorize

    admin, user, tmp = admin_and_user
    samples = {"ALTER": "ALTER TABLE t ADD COLUMN b INT", "COPY": f"COPY t TO '{tmp}/x.csv'",
               "PRAGMA": "PRAGMA version", "EXPLAIN": "EXPLAIN SELECT 1", "CALL": "CALL pragma_version()",
               "LOAD": "LOAD json", "ATTACH": "ATTACH ':memory:' AS x", "DETACH": "DETACH x", "VACUUM": "VACUUM",
               "MERGE_INTO": "MERGE INTO t USING t AS s ON t.a = s.a WHEN MATCHED THEN DELETE",
               "MULTI": "PIVOT t ON a USING count(*)", "EXPORT": f"EXPORT DATABASE '{tmp}/x'",
               "PREPARE": "PREPARE p AS SELECT 1"}
    for kind, sql in samples.items():
        assert kind in authorize.ADMIN_ONLY, kind
        assert [s.type.name for s in duckdb.connect().extract_statements(sql)] == [kind], sql
        with pytest.raises(duckdb_ft.PermissionDenied, match="Insufficient privileges") as err:
            user.execute(sql)
        assert err.value.privilege == duckdb_ft.PermissionDenied.ADMINISTRATOR and err.value.role == "r", sql
    assert admin.execute("SELECT a FROM t").fetchall() == [(1,)]  # nothing changed


def test_every_duckdb_ft_statement_is_parsed_routed_and_documented():
    from duckdb_ft.surface import statements

    block = re.search(r"```sql\n(CREATE ROLE.*?)```", _section("Roles, grants and privileges"), re.S).group(1)
    forms = (block.replace("[", "").replace("]", ""), re.sub(r"\[[^\]]*\] ?", "", block))  # [optional] words in or out
    for head, entry in statements.STATEMENTS.items():
        assert callable(entry.parse) and callable(entry.run), head
        assert any(" ".join(head) in f for f in forms), f"{' '.join(head)} is not in the README's statement list"
        assert " ".join(head) in statements.forms()
    heads = list(statements.STATEMENTS)
    for k, head in enumerate(heads):  # a longer head comes before a shorter one it starts with
        assert not any(later[:len(head)] == head and len(later) > len(head) for later in heads[k + 1:]), head


def test_every_show_form_is_an_entry_and_other_shows_are_duckdbs():
    from duckdb_ft.surface import statements

    examples = {"ROLES": "SHOW ROLES", "GRANTS": "SHOW GRANTS TO ROLE r", "MODELS": "SHOW MODELS IN SCHEMA s",
                "VERSIONS": "SHOW VERSIONS IN MODEL m", "USAGE": "SHOW USAGE", "BASE MODELS": "SHOW BASE MODELS",
                "LIMITS": "SHOW LIMITS", "USERS": "SHOW USERS",
                "USER PROGRAMMATIC ACCESS TOKENS": "SHOW USER PROGRAMMATIC ACCESS TOKENS FOR USER u",
                "USER PATS": "SHOW USER PATS", "DUCKDB_FT_DEFAULT_MODEL": "SHOW duckdb_ft_default_model"}
    shows = {" ".join(head[1:]) for head in statements.STATEMENTS if head[0] == "SHOW"}
    assert shows == set(examples), "a SHOW form was added or removed: give it an example here"
    for form, sql in examples.items():
        st = statements.parse_ft_statement(sql)
        assert st is not None and st.head == ("SHOW", *form.split()) and st.kind == f"SHOW {form}", sql
    for sql in ("SHOW TABLES", "SHOW ALL TABLES", "SHOW t"):
        assert statements.parse_ft_statement(sql) is None, sql
    with pytest.raises(duckdb_ft.InvalidArgument) as err:
        duckdb_ft.connect().execute("SELECT ft_execute('SHOW TABLES')").fetchall()
    assert all(f"SHOW {form}" in str(err.value) for form in shows)


# ------------------------------------------------------------------------------------------------ privileges


def test_every_privilege_is_grantable_where_it_applies_and_documented(admin_and_user):
    from duckdb_ft.governance.roles import OBJECT_KINDS, PRIVILEGES

    admin, user, _ = admin_and_user
    admin.execute("INSERT INTO duckdb_ft.models (schema_name, name, base_model, lora_config, adapter, job_id, owner, "
                  "created_on, version, is_default) VALUES ('main', 'm', 'tiny', '{}', 'x'::BLOB, 'ft_1', 'admin', "
                  "1, 'v1', true)")
    admin.execute("CREATE BASE MODEL bm FROM 'org/bm'").fetchall()
    admin.execute("CREATE SEQUENCE seq").fetchall()
    objects = {"TABLE": "TABLE main.t", "VIEW": "VIEW main.v", "SCHEMA": "SCHEMA s", "MODEL": "MODEL main.m",
               "BASE MODEL": "BASE MODEL bm", "SEQUENCE": "SEQUENCE main.seq",
               "ALL TABLES": "ALL TABLES IN SCHEMA main"}
    assert set(objects) == {*OBJECT_KINDS, "ALL TABLES"}
    admin.execute("CREATE ROLE g").fetchall()
    for privilege, kinds in PRIVILEGES.items():
        for kind, target in objects.items():
            sql = f"GRANT {privilege} ON {target} TO ROLE g"
            if kind in kinds:
                admin.execute(sql).fetchall()
            elif kind != "VIEW":  # a view takes a table's privileges but OWNERSHIP
                with pytest.raises(duckdb_ft.InvalidArgument, match="does not apply"):
                    admin.execute(sql).fetchall()
    granted = {(r[0], r[1]) for r in admin.execute("SHOW GRANTS TO ROLE g").fetchall()}  # privilege, granted_on
    for privilege, kinds in PRIVILEGES.items():
        if privilege != "OWNERSHIP":  # OWNERSHIP makes g the owner instead of a grant
            assert {(privilege, k) for k in kinds} <= granted, privilege
    section = _section("Roles, grants and privileges")
    table = re.search(r"\| privilege \| on \|\n\| --- \| --- \|\n((?:\|.*\|\n)+)", section).group(1)
    documented = {}
    for line in table.splitlines():
        names, on = line.strip("|").split("|")
        for name in re.findall(r"`([A-Z ]+)`", names):
            documented[name] = tuple(k.strip().replace(" IN SCHEMA", "") for k in on.split(","))
    assert documented == PRIVILEGES, "README's privilege table and roles.PRIVILEGES differ"


# ------------------------------------------------------------------------------------------------ permission errors


def test_every_permission_denial_is_made_by_one_constructor():
    package = Path(duckdb_ft.__file__).resolve().parent
    made = re.compile(r"PermissionDenied\(\s*f?[\"']Insufficient privileges")
    hand_made = [str(p.relative_to(package)) for p in package.rglob("*.py") if made.search(p.read_text())]
    assert not hand_made, f"format denials with PermissionDenied.of(...), not by hand: {hand_made}"
    e = duckdb_ft.PermissionDenied.of("SELECT", "TABLE", "main.t", "viewer")
    assert str(e) == "Insufficient privileges to operate on table 'main.t': SELECT is required (current role: viewer)"
    assert (e.privilege, e.object_kind, e.object_name, e.role) == ("SELECT", "TABLE", "main.t", "viewer")


def test_a_denial_carries_its_privilege_object_and_role(admin_and_user):
    admin, user, _ = admin_and_user
    with pytest.raises(duckdb_ft.PermissionDenied) as err:
        user.execute("SELECT * FROM v")
    assert (err.value.privilege, err.value.object_kind, err.value.object_name, err.value.role) == \
        ("SELECT", "VIEW", "main.v", "r")
    with pytest.raises(duckdb_ft.PermissionDenied) as err:
        user.execute("CREATE TABLE s.x (a INT)")
    assert (err.value.privilege, err.value.object_kind, err.value.object_name) == ("USAGE", "SCHEMA", "s")


# ----------------------------------------------------------------------------------------------- AISQL


def test_every_aisql_function_is_registered_allowed_and_documented(con):
    from duckdb_ft.governance.calls import PUBLIC_MACROS
    from duckdb_ft.surface.aisql_functions import FUNCTIONS

    readme = _section("AI_COMPLETE")
    names = {r[0] for r in con.execute("SELECT DISTINCT function_name FROM duckdb_functions() WHERE "
                                       "schema_name = 'cortex'").fetchall()}
    for name in FUNCTIONS:
        assert name in PUBLIC_MACROS and name in names, name
        assert f"`{name}(" in readme, f"{name} is not documented in the README's AI_COMPLETE section"
