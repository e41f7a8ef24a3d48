"""The SQLAlchemy dialect ``duckdb_ft://`` with the real SQLAlchemy, duckdb_engine, pandas and jupysql: COMPLETE
through ``pandas.read_sql``, duckdb-ft's statements through ``text()``, the URL's user authorized as that user, no
aborted transaction left after a failed statement, and jupysql's ``%sql duckdb_ft:///...`` (whose
``result.DataFrame()`` must not run a statement again)."""

from __future__ import annotations

import json
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")
pd = pytest.importorskip("pandas")
pytest.importorskip("duckdb_engine")

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.dialects import registry  # noqa: E402

import duckdb_ft  # noqa: E402
from duckdb_ft.integrations.dbapi import ROLLED_BACK  # noqa: E402

OPTS = '{"max_tokens": 3, "temperature": 0}'
DECLARED = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())[
    "project"]["entry-points"]["sqlalchemy.dialects"]["duckdb_ft"]


def _installed_entry_point() -> str | None:
    found = [e for e in metadata.distribution("duckdb-ft").entry_points
             if e.group == "sqlalchemy.dialects" and e.name == "duckdb_ft"]
    return found[0].value if found else None


if _installed_entry_point() is None:  # the installed metadata predates the entry point: `make install` refreshes it
    registry.register("duckdb_ft", *DECLARED.split(":"))


def test_the_dialect_is_registered_by_its_entry_point():
    installed = _installed_entry_point()
    if installed is None:
        pytest.skip("duckdb-ft's installed metadata predates its entry points: run `make install` again")
    assert installed == DECLARED == "duckdb_ft.integrations.dialect:Dialect"
    from duckdb_ft.integrations.dialect import Dialect

    assert registry.load("duckdb_ft") is Dialect


@pytest.fixture
def db(tmp_path):
    """A database file with tables pub (granted to role reader, held by alice) and secret (granted to nobody)."""
    path = tmp_path / "x.duckdb"
    admin = duckdb_ft.connect(str(path))
    for sql in ["CREATE TABLE pub AS SELECT 'q' || i AS prompt, i AS n FROM range(3) t(i)",
                "CREATE TABLE secret AS SELECT 'salary' AS s", "CREATE ROLE reader", "GRANT ROLE reader TO USER alice",
                "GRANT USAGE ON SCHEMA main TO ROLE reader", "GRANT SELECT ON TABLE pub TO ROLE reader"]:
        admin.execute(sql).fetchall()
    admin.close()
    return path


def test_pandas_read_sql_runs_complete_over_a_table_through_create_engine(db, tiny_model_path):
    engine = create_engine(f"duckdb_ft:///{db}")
    frame = pd.read_sql(text(f"SELECT n, complete(:model, prompt, '{OPTS}') AS answer FROM pub ORDER BY n"), engine,
                        params={"model": tiny_model_path})
    assert frame["n"].tolist() == [0, 1, 2]
    assert all(json.loads(a)["choices"][0]["messages"] for a in frame["answer"])
    cortex = pd.read_sql(text(f"SELECT snowflake.cortex.complete(:model, 'q0', '{OPTS}') AS a"), engine,
                         params={"model": tiny_model_path})
    assert json.loads(cortex["a"][0])["choices"] == json.loads(frame["answer"][0])["choices"]
    engine.dispose()


def test_duckdb_ft_statements_run_through_text(db):
    engine = create_engine(f"duckdb_ft:///{db}")
    with engine.begin() as c:
        assert "granted" in c.execute(text("GRANT ROLE reader TO USER bob")).scalar()
        assert c.execute(text("SHOW MODELS")).fetchall() == []
        assert c.execute(text("DROP MODEL IF EXISTS nothing_here")).fetchall() is not None
    roles = pd.read_sql(text("SHOW ROLES"), engine)["name"].tolist()
    assert "reader" in roles
    engine.dispose()


def test_the_urls_user_reads_what_is_granted_and_is_refused_the_rest(db):
    engine = create_engine(f"duckdb_ft:///{db}?user=alice")
    assert pd.read_sql("SELECT count(*) AS c FROM pub", engine)["c"][0] == 3
    with pytest.raises(pd.errors.DatabaseError, match="Insufficient privileges") as refused:
        pd.read_sql(text("SELECT * FROM secret"), engine)
    assert isinstance(refused.value.__cause__.orig, duckdb_ft.PermissionDenied)
    with engine.connect() as c, pytest.raises(sqlalchemy.exc.DBAPIError, match="Insufficient privileges"):
        c.execute(text("GRANT SELECT ON TABLE secret TO ROLE reader"))
    engine.dispose()
    admin = create_engine(f"duckdb_ft:///{db}")
    assert "secret" not in str(pd.read_sql(text("SHOW GRANTS TO ROLE reader"), admin).values.tolist())
    admin.dispose()


def test_a_failed_statement_leaves_no_aborted_transaction(db):
    engine = create_engine(f"duckdb_ft:///{db}")
    with engine.connect() as c:
        c.execute(text("CREATE TABLE t (x INTEGER)"))
        c.commit()
        c.execute(text("INSERT INTO t VALUES (1)"))
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="no_such_table") as failed:
            c.execute(text("SELECT * FROM no_such_table"))
        assert ROLLED_BACK in getattr(failed.value.orig, "__notes__", [])  # says what became of the transaction
        c.execute(text("INSERT INTO t VALUES (2)"))  # DuckDB's "Current transaction is aborted" would refuse it
        c.commit()
        assert c.execute(text("SELECT x FROM t")).fetchall() == [(2,)]  # the row before the failure was undone
    engine.dispose()


def test_bad_url_options_say_what_to_use(db):
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="resume_jobs='maybe': use true or false"):
        create_engine(f"duckdb_ft:///{db}?resume_jobs=maybe").connect()
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="arguments bogus are unknown: use user, resume_jobs, "):
        create_engine(f"duckdb_ft:///{db}", connect_args={"bogus": 1}).connect()


@pytest.mark.slow
def test_jupysql_connects_by_url_and_its_dataframe_does_not_run_a_statement_again(db, tiny_model_path):
    pytest.importorskip("sql")
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "sql")
    ip.run_line_magic("config", "SqlMagic.displaylimit = 0")
    url = f"duckdb_ft:///{db}"
    ip.run_line_magic("sql", url)
    try:
        made = ip.run_line_magic("sql", "SELECT ft_execute('CREATE ROLE made_once') AS r")
        assert "created" in made.DataFrame()["r"][0]  # from the rows fetched: a second CREATE would fail
        granted = ip.run_line_magic("sql", "GRANT ROLE made_once TO USER bob")  # its rows survive jupysql's COMMIT
        assert "granted" in granted.DataFrame()["status"][0]
        answer = ip.run_line_magic("sql", f"SELECT complete('{tiny_model_path}', 'hi', '{OPTS}') AS a")
        assert json.loads(answer.DataFrame()["a"][0])["choices"]
        with pytest.raises(Exception, match="no_such_table"):
            ip.run_line_magic("sql", "SELECT * FROM no_such_table")
        assert ip.run_line_magic("sql", "SELECT 42 AS a").DataFrame()["a"][0] == 42  # not an aborted transaction
    finally:
        ip.run_line_magic("sql", f"--close {url}")
    alice = f"duckdb_ft:///{db}?user=alice"
    ip.run_line_magic("sql", alice)
    try:
        with pytest.raises(Exception, match="Insufficient privileges"):
            ip.run_line_magic("sql", "SELECT * FROM secret")
        assert ip.run_line_magic("sql", "SELECT count(*) AS c FROM pub").DataFrame()["c"][0] == 3
    finally:
        ip.run_line_magic("sql", f"--close {alice}")
