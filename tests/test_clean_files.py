"""Clean files (issue 37): a database duckdb-ft closes is checkpointed, so no write-ahead log (``.wal``) is left
beside it for the next tool to replay: after the shell exits (``-c``, a script on stdin), after ``duckdb-ft
export`` (which also clears a log another tool left), and after a script, whether it closes its connection or
leaves it open at interpreter exit (which left a log before: the engine's references kept DuckDB from closing the
database). The control: a process that ends without closing leaves the log, so the tests can fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import COMMAND

#: Enough rows that DuckDB keeps them in the log rather than checkpointing on the way (below its 16 MB threshold).
WRITE = "CREATE TABLE logged AS SELECT range AS i, repeat('x', 40) AS s FROM range(50000)"


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def _wal(db: Path) -> Path:
    return Path(f"{db}.wal")


def _left_open_by_duckdb(db: Path) -> None:
    """A DuckDB process writes ``db`` and ends without closing it (``os._exit``, as a crash or a kill): the log
    stays (the control)."""
    run = _python("import duckdb, os, sys; con = duckdb.connect(sys.argv[1]); con.execute(sys.argv[2]); os._exit(0)",
                  str(db), WRITE)
    assert run.returncode == 0, run.stderr
    assert _wal(db).is_file() and _wal(db).stat().st_size > 100_000  # DuckDB 2.0 leaves it


def _rows(db: Path) -> int:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM logged").fetchall()[0][0]
    finally:
        con.close()


def test_a_process_ending_without_closing_leaves_a_wal_which_the_other_tests_rule_out(tmp_path):
    _left_open_by_duckdb(tmp_path / "plain.duckdb")


@pytest.mark.slow
def test_the_shell_leaves_no_wal_after_c_or_a_script(tmp_path):
    one = tmp_path / "one.duckdb"
    run = subprocess.run([*COMMAND, str(one), "-c", WRITE], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    script = tmp_path / "script.duckdb"
    run = subprocess.run([*COMMAND, str(script)], input=f"{WRITE};\nSELECT 1;\n", capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    for db in (one, script):
        assert not _wal(db).exists(), f"{db.name} left a write-ahead log"
        assert _rows(db) == 50000


@pytest.mark.parametrize("ending", ["con.close()", "pass"], ids=["closed", "left-open-at-exit"])
def test_a_script_leaves_no_wal_whether_it_closes_or_exits(tmp_path, ending):
    db = tmp_path / "script.duckdb"
    run = _python(f"import duckdb_ft, sys\ncon = duckdb_ft.connect(sys.argv[1])\ncon.execute(sys.argv[2])\n{ending}",
                  str(db), WRITE)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert not _wal(db).exists()
    assert _rows(db) == 50000


def test_export_checkpoints_the_database_and_its_errors_say_error_once(apple_copy, tmp_path, capsys):
    from duckdb_ft import cli

    db = Path(apple_copy[0])
    _left_open_by_duckdb(db)  # another tool left a log: the export's close folds it in
    assert cli.main(["export", str(db), "exported", str(tmp_path / "out"), "--format", "merged"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert not _wal(db).exists()
    assert _rows(db) == 50000
    capsys.readouterr()

    assert cli.main(["export", str(db), "no_such_model", str(tmp_path / "x"), "--format", "gguf"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("Error: model 'main.no_such_model' does not exist")
    assert out.err.count("Error") == 1 and out.err.count("\n") == 1, out.err
    missing = tmp_path / "missing.duckdb"
    assert cli.main(["export", str(missing), "exported", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err == f"Error: database file {missing} does not exist\n"
    assert not missing.exists() and not (tmp_path / "x").exists()  # nothing created
    assert not _wal(db).exists()


def test_a_copy_in_an_older_storage_version_holds_the_catalog(tmp_path):
    """The README's recipe for DuckDB 1.x: ATTACH ... (STORAGE_VERSION 'v1.0.0') + COPY FROM DATABASE, run through
    duckdb-ft's connection; the copy is in storage version 1.0 (what DuckDB 1.x reads; checked by hand with DuckDB
    1.1.3 and 1.5.6, which refuse the original) and holds the tables and duckdb-ft's catalog."""
    import duckdb

    import duckdb_ft

    db, old = tmp_path / "shop.duckdb", tmp_path / "shop-v1.duckdb"
    con = duckdb_ft.connect(str(db))
    con.execute("CREATE TABLE faq AS SELECT 'q' || i AS q, 'a' || i AS a FROM range(10) t(i)")
    con.execute(f"ATTACH '{old}' AS v1 (STORAGE_VERSION 'v1.0.0')")
    con.execute("COPY FROM DATABASE shop TO v1")
    con.execute("DETACH v1")
    con.close()
    check = duckdb.connect(str(old), read_only=True)
    try:
        tags = check.execute("SELECT tags FROM duckdb_databases() WHERE database_name = 'shop-v1'").fetchall()[0][0]
        assert tags["storage_version"] == "v1.0.0+"
        assert check.execute("SELECT count(*) FROM faq").fetchall() == [(10,)]
        catalog = {r[0] for r in check.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = "
                                                "'duckdb_ft'").fetchall()}
        assert {"jobs", "job_rows", "models"} <= catalog
    finally:
        check.close()
    assert not Path(f"{old}.wal").exists() and not _wal(db).exists()
