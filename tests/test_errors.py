"""Errors keep their duckdb-ft type across the SQL edge: for Python callers of the connection ``connect()`` returns
and of ``duckdb_ft.execute()``, an error raised inside a duckdb-ft UDF is the duckdb-ft exception again, which is
also the matching DuckDB exception."""

from __future__ import annotations

import duckdb
import pytest

import duckdb_ft


def test_every_duckdb_ft_error_is_also_the_matching_duckdb_error():
    assert issubclass(duckdb_ft.FtError, duckdb.Error)
    assert issubclass(duckdb_ft.PermissionDenied, duckdb.PermissionException)
    assert issubclass(duckdb_ft.NotFound, duckdb.CatalogException)
    assert issubclass(duckdb_ft.ModelNotFound, duckdb_ft.NotFound)
    assert issubclass(duckdb_ft.InvalidArgument, duckdb.InvalidInputException)


def test_a_udf_error_is_raised_as_its_duckdb_ft_type(con):
    with pytest.raises(duckdb_ft.NotFound, match="fine-tuning job 'ft_nope' does not exist") as e:
        con.execute("SELECT finetune('DESCRIBE', 'ft_nope')").fetchall()
    assert isinstance(e.value, duckdb.CatalogException)
    assert "Python exception occurred" not in str(e.value)  # the message is the message, not DuckDB's wrapping
    with pytest.raises(duckdb_ft.InvalidArgument, match="unknown FINETUNE action 'FLY'"):
        con.execute("SELECT finetune('FLY')")
    with pytest.raises(duckdb_ft.ModelNotFound, match="unknown model 'no_such_model'"):
        con.execute("SELECT complete('no_such_model', 'hi')").fetchall()


def test_execute_on_a_raw_connection_raises_duckdb_ft_types():
    raw = duckdb.connect()
    duckdb_ft.install(raw)
    # A SELECT's relation is DuckDB's and lazy: its error comes when it runs, as DuckDB's; from_duckdb types it.
    with pytest.raises(duckdb.Error) as e:
        duckdb_ft.execute(raw, "SELECT finetune('CANCEL', 'ft_nope')").fetchall()
    assert isinstance(duckdb_ft.errors.from_duckdb(e.value), duckdb_ft.NotFound)
    with pytest.raises(duckdb_ft.NotFound, match="role 'ghost' does not exist"):
        duckdb_ft.execute(raw, "GRANT ROLE ghost TO USER u1")
    with pytest.raises(duckdb.CatalogException):  # DuckDB's own errors stay DuckDB's
        duckdb_ft.execute(raw, "SELECT * FROM no_such_table")


def test_a_user_session_catches_permission_denied_by_its_type(tmp_path):
    path = str(tmp_path / "t.duckdb")
    admin = duckdb_ft.connect(path)
    admin.execute("CREATE TABLE secret AS SELECT 1 AS x")
    user = admin.cursor()
    user.execute("CREATE ROLE analyst")
    user.execute("GRANT ROLE analyst TO USER u1")
    u1 = duckdb_ft.install(admin.duckdb_connection.cursor(), user="u1")
    with pytest.raises(duckdb_ft.PermissionDenied, match="Insufficient privileges"):
        duckdb_ft.execute(u1, "SELECT * FROM secret")
    admin.close()


def test_a_connection_fetches_arrow_tables_for_plain_sql_and_for_its_own_statements(con):
    """``to_arrow_table`` (duckdb 2.0) and ``fetch_arrow_table`` (1.x) both work on plain SQL and on duckdb-ft's own
    statements, and a fetch consumes the result as DuckDB's cursors do."""
    plain = con.execute("SELECT range AS n FROM range(3)").to_arrow_table()
    assert plain.column("n").to_pylist() == [0, 1, 2]
    assert con.execute("SELECT 42 AS answer").fetch_arrow_table().to_pylist() == [{"answer": 42}]
    con.execute("CREATE ROLE analyst")
    own = con.execute("SHOW ROLES")
    table = own.to_arrow_table()
    assert "analyst" in str(table.to_pylist())
    assert own.fetchall() == []
