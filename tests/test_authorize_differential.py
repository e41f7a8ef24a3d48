"""Differential test of the plain-SQL authorizer against DuckDB itself (issue 12).

Statements come from a small grammar: CTEs (shadowing table names or not), subqueries, set operations, joins,
PIVOT (with and without an IN list), UNPIVOT, FROM-first, views over views, INSERT ... RETURNING, DESCRIBE of a
query, three-part names, other databases, quoting and case, scalar function calls (allowed and not: sequences,
settings, catalog-reading scalars, unknown names), enum types in casts and column definitions. For each one the attacker's session either is
refused (and then nothing changed), or is allowed, and then every table DuckDB's profiler saw the statement scan
(run as the administrator in a transaction that is rolled back) is one the authorizer named, and one the role may
read, and every function DuckDB's binder bound for it is on the allow-list; the administrator's sequence
never advances.

A run generates 300 statements (``DUCKDB_FT_FUZZ_EXAMPLES`` raises the count: ``make fuzz-authorize`` runs
20,000). Which ones rotates with the UTC date, so that the suite's runs over the days try far more statements than
one fixed set: a day's runs generate the same statements, and ``DUCKDB_FT_FUZZ_SEED`` (the date as ``YYYYMMDD``,
which a failure prints) repeats another day's.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import duckdb
import pytest
from hypothesis import HealthCheck, given, note, seed, settings, strategies as st

import duckdb_ft
from duckdb_ft.errors import PermissionDenied
from duckdb_ft.governance.authorize import authorize
from conftest import setup_attack_db, user_connection
from duckdb_ft.governance.calls import PUBLIC_MACROS
from duckdb_ft.governance.function_list import ALLOWED_FUNCTIONS

EXAMPLES = int(os.environ.get("DUCKDB_FT_FUZZ_EXAMPLES", "300"))
SEED = int(os.environ.get("DUCKDB_FT_FUZZ_SEED") or datetime.now(timezone.utc).strftime("%Y%m%d"))
READABLE = {"memory.main.pub"}  # the only base table the attacker may read (v_pub, v_v and mine are over it)

NAMES = ["pub", "secret", "logt", "v_pub", "v_sec", "v_v", "mine", "main.pub", "memory.main.pub", "memory.pub",
         "memory.main.secret", "hr.main.salaries", "hr.pub", "hr.main.pub", '"PUB"', '"Secret"', "Pub", "SECRET",
         '"main"."pub"', "main.v_pub", "temp.main.pub", "system.main.duckdb_tables"]
CTE_NAMES = ["secret", "pub", "c1", "logt"]
#: Scalar expressions over (s, x): allowed ones, and ones only the administrator may run.
SCALARS = ["upper(s)", "length(s)", "abs(x)", "x + 1", "coalesce(s, 'z')", "hash(s)", "list_value(x)[1]",
           "current_date", "s || 'a'", "'q1'::VARCHAR", "x::DOUBLE", "if(x > 1, s, 'z')", "md5(s)",
           "nextval('seq')", "currval('seq')", "setval('seq', 9)", "current_setting('threads')", "current_schema",
           "current_database()", "version()", "s::mood", "'calm'::mood", "enum_range(NULL::mood)",
           "json_serialize_plan('SELECT 1')", "system.main.nextval('seq')", "getenv('HOME')", "no_such_function(x)",
           "pg_catalog.current_database()", "'seq'.nextval()", "NULL::STRUCT(a mood)"]
TYPES = ["VARCHAR", "mood", "INTEGER[]", "STRUCT(a mood)", "ENUM('a', 'b')", "main.mood", "no_such_type", "JSON"]


def _extend(sub: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(st.sampled_from(CTE_NAMES), sub, st.sampled_from(CTE_NAMES + NAMES[:3])).map(
            lambda t: f"(WITH {t[0]} AS (SELECT * FROM {t[1]}) SELECT s, x::BIGINT AS x FROM {t[2]})"),
        st.tuples(sub, sub, st.sampled_from(["UNION ALL", "UNION", "EXCEPT", "INTERSECT"])).map(
            lambda t: f"(SELECT * FROM {t[0]} {t[2]} SELECT * FROM {t[1]})"),
        st.tuples(sub, sub).map(lambda t: f"(SELECT a.s, b.x FROM {t[0]} a JOIN {t[1]} b ON a.x = b.x)"),
        st.tuples(sub, sub).map(lambda t: f"(SELECT * FROM {t[0]} WHERE x IN (SELECT x FROM {t[1]}))"),
        st.tuples(sub, sub).map(lambda t: f"(SELECT s, (SELECT max(x) FROM {t[1]})::BIGINT AS x FROM {t[0]})"),
        sub.map(lambda r: f"(FROM {r} SELECT s, x)"),
        sub.map(lambda r: f"(SELECT 'p' AS s, coalesce(\"q1\", 0)::BIGINT AS x FROM "
                          f"(PIVOT {r} ON s IN ('q1', 'salary 1') USING sum(x)))"),
        sub.map(lambda r: f"(SELECT 'p' AS s, 1::BIGINT AS x FROM (PIVOT {r} ON s USING sum(x)))"),
        sub.map(lambda r: f"(SELECT s, v::BIGINT AS x FROM (UNPIVOT (SELECT s, x FROM {r}) ON x INTO NAME k VALUE v))"),
        st.tuples(sub, st.sampled_from(SCALARS)).map(
            lambda t: f"(SELECT ({t[1]})::VARCHAR AS s, x::BIGINT AS x FROM {t[0]})"),
        st.tuples(sub, st.sampled_from(SCALARS)).map(lambda t: f"(SELECT s, x FROM {t[0]} WHERE ({t[1]}) IS NOT NULL)"),
        st.tuples(sub, st.sampled_from(CTE_NAMES)).map(
            lambda t: f"(SELECT * FROM {t[0]} WHERE 1 IN (WITH {t[1]} AS (SELECT 1) SELECT * FROM {t[1]}))"),
    )


BASE = st.sampled_from(NAMES).map(lambda n: f"(SELECT s, x::BIGINT AS x FROM {n})")


def relation(leaves: int = 6) -> st.SearchStrategy[str]:
    """A parenthesized relation with columns (s VARCHAR, x BIGINT)."""
    return st.recursive(BASE, _extend, max_leaves=leaves)


STATEMENTS = st.one_of(
    relation().map(lambda r: f"SELECT * FROM {r}"),
    relation().map(lambda r: f"SELECT count(*), sum(x) FROM {r}"),
    relation().map(lambda r: f"FROM {r}"),
    relation().map(lambda r: f"DESCRIBE SELECT * FROM {r}"),
    st.tuples(st.sampled_from(CTE_NAMES), relation(3)).map(
        lambda t: f"WITH {t[0]} AS (SELECT * FROM pub) SELECT * FROM {t[1]}"),
    st.tuples(relation(3), st.booleans()).map(
        lambda t: f"INSERT INTO logt SELECT s, x FROM {t[0]}" + (" RETURNING *" if t[1] else "")),
    relation(3).map(lambda r: f"CREATE OR REPLACE VIEW fuzz_v AS SELECT * FROM {r}"),
    relation(3).map(lambda r: f"CREATE OR REPLACE TABLE fuzz_t AS SELECT * FROM {r}"),
    relation(3).map(lambda r: f"UPDATE logt SET x = x WHERE x IN (SELECT x FROM {r})"),
    relation(3).map(lambda r: f"SHOW SELECT * FROM {r}"),
    st.sampled_from(SCALARS).map(lambda e: f"INSERT INTO logt VALUES (({e})::VARCHAR, 1)"),
    st.sampled_from(SCALARS).map(lambda e: f"SET VARIABLE fz = {e}"),
    st.tuples(st.sampled_from(SCALARS), st.sampled_from(TYPES)).map(
        lambda t: f"CREATE OR REPLACE TABLE fuzz_c (a VARCHAR DEFAULT ({t[0]})::VARCHAR, b {t[1]})"),
)


@pytest.fixture(scope="module")
def world():
    admin = duckdb_ft.connect()
    setup_attack_db(admin)
    admin.execute("CREATE VIEW v_v AS SELECT * FROM v_pub")
    admin.execute("GRANT SELECT ON VIEW v_v TO ROLE attacker").fetchall()
    admin.execute("CREATE SEQUENCE seq")
    admin.execute("CREATE TYPE mood AS ENUM ('calm', 'q1')")
    u1 = user_connection(admin, "u1")
    u1.execute("CREATE VIEW mine AS SELECT * FROM v_pub")
    probe = admin.duckdb_connection.cursor()
    probe.execute("PRAGMA enable_profiling = 'no_output'")
    counts = {"allowed": 0, "denied": 0}
    yield admin, u1, probe, counts
    print(f"\ndifferential authorizer fuzz (DUCKDB_FT_FUZZ_SEED={SEED}): {counts}")
    assert admin.execute("SELECT last_value FROM duckdb_sequences() WHERE sequence_name = 'seq'").fetchall() == \
        [(None,)], f"an allowed statement advanced the administrator's sequence (DUCKDB_FT_FUZZ_SEED={SEED})"
    assert counts["allowed"] > EXAMPLES // 20, f"the grammar should produce allowed statements too: {counts}, DUCKDB_FT_FUZZ_SEED={SEED}"
    u1.close()
    admin.close()


def scanned(node) -> set[str]:
    """Base tables in a profile, as database.schema.name (lower case)."""
    out = set()
    if isinstance(node, dict):
        info = node.get("extra_info") or {}
        if isinstance(info, dict) and "Table" in info:
            out.add(str(info["Table"]).replace('"', "").lower())
        for child in node.get("children", []) + node.get("operator", []):
            out |= scanned(child)
    return out


def profile(probe, sql: str) -> set[str] | None:
    """What DuckDB scans running ``sql`` as the administrator (rolled back); None if DuckDB refuses it."""
    probe.execute("BEGIN TRANSACTION")
    try:
        probe.execute(sql).fetchall()
        return scanned(json.loads(probe.get_profiling_information(format="json")))
    except Exception:
        return None
    finally:
        probe.execute("ROLLBACK")


def state(admin):
    """Everything a denied statement could change, in one query."""
    return admin.execute("""SELECT (SELECT count(*) || ':' || sum(hash(s, x)) FROM logt),
        (SELECT string_agg(n, ',' ORDER BY n) FROM (SELECT database_name || '.' || schema_name || '.' || table_name
         AS n FROM duckdb_tables())),
        (SELECT string_agg(n, ',' ORDER BY n) FROM (SELECT view_name || sql AS n FROM duckdb_views()
         WHERE NOT internal)),
        (SELECT string_agg(n, ',' ORDER BY n) FROM (SELECT object_name || owner AS n
         FROM duckdb_ft.object_owners)),
        (SELECT string_agg(sequence_name || ':' || coalesce(last_value::VARCHAR, '-'), ',') FROM duckdb_sequences())
        """).fetchall()


def bound_functions(probe, sql: str) -> set[str]:
    """The functions DuckDB's binder bound for a query (its serialized plan, as the administrator binds it)."""
    try:
        tree = json.loads(probe.execute("SELECT json_serialize_plan(?)", [sql]).fetchall()[0][0])
    except duckdb.Error:
        return set()
    out = set()

    def visit(node):
        if isinstance(node, dict):
            path = (node.get("qname") or {}).get("path") if isinstance(node.get("qname"), dict) else None
            if path and str(node.get("expression_class", "")).startswith("BOUND_"):  # not a table function
                out.add(str(path[-1]).lower())
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(tree)
    return out


@pytest.mark.slow
@seed(SEED)
@settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
          suppress_health_check=list(HealthCheck))
@given(sql=STATEMENTS)
def test_no_statement_scans_a_table_the_authorizer_did_not_name(world, sql):
    admin, u1, probe, counts = world
    note(f"to run this day's statements again: DUCKDB_FT_FUZZ_SEED={SEED}")
    try:
        decisions = authorize(u1.session, sql, u1._raw)
    except (PermissionDenied, duckdb.Error):  # refused by the authorizer, or by DuckDB's own parser
        counts["denied"] += 1
        if sql.split()[0] in ("INSERT", "UPDATE", "CREATE", "SET") or "seq" in sql:  # through the session
            before = state(admin)
            with pytest.raises(duckdb.Error):
                u1.execute(sql).fetchall()
            assert state(admin) == before, f"denied but changed something: {sql}"
        return
    counts["allowed"] += 1
    if sql.split()[0] in ("SELECT", "FROM"):
        unlisted = {f for f in bound_functions(probe, sql) - ALLOWED_FUNCTIONS - PUBLIC_MACROS
                    if f.startswith("__ft_") or not f.startswith("__")}  # __cast ...: the binder's own rewrites
        assert not unlisted, f"{sql}: allowed, but DuckDB bound {unlisted}"
    truth = profile(probe, sql)  # None: DuckDB refuses it (a type error), so nothing ran
    if truth is not None:
        named = {f"memory.{n}".lower() for d in decisions for n in d.reads}
        escaped = truth - named - {f"memory.{n}".lower() for d in decisions for n in d.writes}
        assert not escaped, f"{sql}: DuckDB scanned {escaped}, the authorizer named {named}"
        assert truth <= READABLE | {"memory.main.logt"} and "memory.main.logt" not in truth, \
            f"{sql}: allowed, but scans {truth}"
