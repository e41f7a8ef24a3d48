"""The duckdb-ft shell as a person uses it: typed into a terminal (pexpect), and with -c and scripts on stdin."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from conftest import COMMAND
from duckdb_ft import cli
from duckdb_ft.shell import progress, render, sqltext
from duckdb_ft.shell.repl import Shell, error_message

ROWS = "SELECT * FROM (VALUES (1, 'x', NULL), (22, 'y,z', true)) t(a, b, c)"


def run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    return subprocess.run([*COMMAND, *args], input=stdin, capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


# ------------------------------------------------------------------------------------------ statement splitting


@pytest.mark.parametrize("text, statements, rest", [
    ("SELECT 1;", ["SELECT 1"], ""),
    ("SELECT 1", [], "SELECT 1"),
    ("SELECT ';' AS semi;", ["SELECT ';' AS semi"], ""),
    ("SELECT 'it''s'; SELECT 2", ["SELECT 'it''s'"], " SELECT 2"),
    ('SELECT 1 AS "a;b";', ['SELECT 1 AS "a;b"'], ""),
    ("SELECT 1 -- not the end;\n + 1;", ["SELECT 1 -- not the end;\n + 1"], ""),
    ("SELECT 1 /* a /* nested ; */ ; */;", ["SELECT 1 /* a /* nested ; */ ; */"], ""),
    ("SELECT $$a;b$$, $t$c;$t$;", ["SELECT $$a;b$$, $t$c;$t$"], ""),
    ("SELECT E'it\\'s;';", ["SELECT E'it\\'s;'"], ""),
    ("-- only a comment;\n;;", [], ""),
])
def test_split_respects_quotes_and_comments(text, statements, rest):
    assert sqltext.split(text) == (statements, rest)


@pytest.mark.parametrize("text, complete", [
    ("SELECT 1;", True), ("SELECT 1", False), ("SELECT 'a;", False), ("SELECT 1; -- done", True),
    ("SELECT 1; /* open", False), ("", True),
])
def test_is_complete(text, complete):
    assert sqltext.is_complete(text) is complete


# ---------------------------------------------------------------------------------------------- output modes


MODES = {
    "box": ("┌───────┬─────────┬─────────┐\n"
            "│   a   │    b    │    c    │\n"
            "│ int32 │ varchar │ boolean │\n"
            "├───────┼─────────┼─────────┤\n"
            "│     1 │ x       │ NULL    │\n"
            "│    22 │ y,z     │ true    │\n"
            "└───────┴─────────┴─────────┘\n"),
    "csv": 'a,b,c\n1,x,\n22,"y,z",true\n',
    "json": '[{"a":1,"b":"x","c":null},\n{"a":22,"b":"y,z","c":true}]\n',
    "line": "a = 1\nb = x\nc = NULL\n\na = 22\nb = y,z\nc = true\n",
    "markdown": ("|   a | b   | c    |\n"
                 "|----:|-----|------|\n"
                 "|   1 | x   | NULL |\n"
                 "|  22 | y,z | true |\n"),
    "list": "a|b|c\n1|x|NULL\n22|y,z|true\n",
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_output_modes_exactly(mode, capsys):
    assert cli.main([f"-{mode}", "-c", ROWS]) == 0
    assert capsys.readouterr().out == MODES[mode]


def test_json_mode_is_json(capsys):
    assert cli.main(["-json", "-c", "SELECT 1.5 AS x, 'q\"uote' AS s, [1, 2] AS l, NULL AS n"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"x": 1.5, "s": 'q"uote', "l": "[1, 2]", "n": None}]


def test_box_cuts_long_and_wide_results():
    tall = render.render("box", ["i"], ["BIGINT"], [(str(i),) for i in range(1000)])
    assert "│   999 │" in tall and "│    20 │" not in tall and tall.rstrip().endswith("1000 rows (40 shown)")
    wide = render.render("box", [f"c{i}" for i in range(40)], ["VARCHAR"] * 40, [("v" * 30,) * 40], max_width=80)
    assert all(len(line) <= 80 for line in wide.splitlines())
    assert "│ … │" in wide and "40 columns (" in wide
    long = render.render("box", ["s"], ["VARCHAR"], [("word " * 100,)], max_width=60)
    assert all(len(line) <= 60 for line in long.splitlines()) and "…" in long


def test_statements_without_a_result_print_nothing_and_explain_prints_the_plan(capsys):
    assert cli.main(["-c", "CREATE TABLE t(a INT); INSERT INTO t VALUES (1); SET threads = 1; UPDATE t SET a = 2;"
                           "EXPLAIN SELECT * FROM t;"]) == 0
    out = capsys.readouterr().out
    assert "Count" not in out and "Success" not in out and "SEQ_SCAN" in out.upper().replace(" ", "_")


# ----------------------------------------------------------------------------------------- errors and scripts


@pytest.mark.slow
def test_udf_errors_are_one_line_and_duckdb_errors_look_like_duckdbs():
    r = run("-c", "SELECT finetune('FOO')")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("Error: unknown FINETUNE action 'FOO'; valid actions: CREATE, SHOW, DESCRIBE, "
                               "CANCEL, RESUME, WAIT") and r.stderr.count("\n") == 1, r.stderr
    r = run("-c", "SELECT * FROM nope")
    assert r.returncode == 1
    assert r.stderr.startswith("Catalog Error:\nTable with name nope does not exist!") and "Traceback" not in r.stderr


def test_error_message_forms():
    import duckdb

    class Boom(Exception):
        pass

    udf = duckdb.InvalidInputException("Invalid Input Error: Python exception occurred while executing the UDF: "
                                       "NotFound: fine-tuning job 'ft_x' does not exist")
    assert error_message(udf) == "Error: fine-tuning job 'ft_x' does not exist"
    bug = duckdb.InvalidInputException("Invalid Input Error: Python exception occurred while executing the UDF: "
                                       "KeyError: 'x'")
    assert error_message(bug) == "Error: KeyError: 'x'"
    assert error_message(Boom("bad")) == "Error: Boom: bad"


@pytest.mark.slow
def test_stdin_script_goes_on_after_an_error_and_exits_1_like_duckdb(tmp_path):
    script = "CREATE TABLE t AS SELECT 41 AS x;\nSELECT nope; SELECT x + 1 AS y FROM t;\nSELECT x\nFROM t WHERE x > 99;\n"
    r = run(str(tmp_path / "db.duckdb"), "-csv", stdin=script)
    assert r.returncode == 1 and r.stdout == "y\n42\nx\n" and r.stderr.startswith("Binder Error:")
    r = run(str(tmp_path / "db2.duckdb"), "-csv", "-bail", stdin=script)
    assert r.returncode == 1 and r.stdout == ""


@pytest.mark.slow
def test_stdin_script_with_dot_commands(tmp_path):
    script = ("-- a comment\nCREATE TABLE people(name VARCHAR, age INT);\n"
              "INSERT INTO people VALUES ('Ana', 31), ('Ben', NULL);\nCREATE VIEW adults AS FROM people WHERE age >= 18;\n"
              ".tables\n.schema people\n.mode csv\nFROM people ORDER BY name;\n.mode line\nFROM adults\n")
    r = run(str(tmp_path / "db.duckdb"), stdin=script)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("adults  people\n"
                        "CREATE TABLE people(\"name\" VARCHAR, age INTEGER);\n"
                        "name,age\nAna,31\nBen,\n"
                        "name = Ana\n age = 31\n")


@pytest.mark.slow
def test_read_stops_at_the_first_error(tmp_path):
    (tmp_path / "s.sql").write_text("SELECT 1 AS one;\nSELECT nope;\nSELECT 3 AS three;\n")
    r = run("-csv", "-c", f".read {tmp_path / 's.sql'}")
    assert r.returncode == 1 and r.stdout == "one\n1\n"
    r = run("-c", ".read /nonexistent.sql")
    assert r.returncode == 1 and r.stderr.startswith("Error: cannot open '/nonexistent.sql'")


def test_dot_command_errors(capsys):
    assert cli.main(["-c", ".mode xml"]) == 1
    assert "unknown output mode 'xml'" in capsys.readouterr().err
    assert cli.main(["-c", ".frobnicate"]) == 1
    assert 'unknown command or invalid arguments: "frobnicate"' in capsys.readouterr().err
    assert cli.main(["-c", ".exit 3"]) == 3


def test_timer_prints_run_time(capsys):
    assert cli.main(["-c", ".timer on\nSELECT 1 AS x;"]) == 0
    assert "Run Time (s): real " in capsys.readouterr().out


@pytest.mark.slow
def test_demo_is_the_subcommand_and_a_database_named_demo_opens_as_dot_slash(monkeypatch, tmp_path):
    import duckdb_ft

    calls = []
    fake = types.ModuleType("duckdb_ft.demo")
    fake.run = lambda database: calls.append(database) or 7
    monkeypatch.setitem(sys.modules, "duckdb_ft.demo", fake)
    monkeypatch.setattr(duckdb_ft, "demo", fake, raising=False)
    assert cli.main(["demo", "shop.duckdb"]) == 7 and calls == ["shop.duckdb"]
    r = run("./demo", "-csv", "-c", "CREATE TABLE t AS SELECT 1 AS x; FROM t;", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "x\n1\n" and (tmp_path / "demo").exists()


@pytest.mark.slow
def test_wait_for_a_missing_job_is_an_error():
    r = run("--wait", "ft_missing")
    assert r.returncode == 1 and r.stderr == ("Error: fine-tuning job 'ft_missing' does not exist: finetune('SHOW') "
                                              "lists the jobs\n")


@pytest.mark.slow
def test_wait_option_after_c_follows_the_new_job_in_plain_lines(tmp_path, tiny_model_path):
    create = ("CREATE TABLE qa AS SELECT 'q' || i AS q, 'a' || i AS a FROM range(8) t(i);"
              f"SELECT finetune('CREATE', 'm', '{tiny_model_path}', 'SELECT q AS prompt, a AS completion FROM qa',"
              " NULL, '{\"max_epochs\": 2}') IS NOT NULL AS created;")
    r = run(str(tmp_path / "db.duckdb"), "-csv", "-c", create, "--wait")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["created", "true"]
    assert re.fullmatch(r"ft_[0-9a-f-]{36} SUCCESS in \d:\d\d:\d\d: model main\.m \(loss [\d.]+, val_loss [\d.]+\)",
                        lines[-1]), lines
    assert all(" IN_PROGRESS " in line or " PENDING" in line for line in lines[2:-1]), lines
    assert not (tmp_path / "db.duckdb.wal").exists()  # closed checkpointed at exit, after the job (issue 37)


def test_every_dot_command_is_in_help_and_in_the_readme(capsys):
    from duckdb_ft.shell.commands import COMMANDS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    shell_section = readme.split("## The shell")[1].split("\n## ")[0]
    assert cli.main(["-c", ".help"]) == 0
    help_text = capsys.readouterr().out
    for name in COMMANDS:
        assert f".{name}" in help_text and f"`.{name}" in shell_section, name


def test_wait_shows_a_live_bar_in_a_terminal_and_a_summary(tiny_model_path):
    import duckdb_ft

    con = duckdb_ft.connect()
    con.execute("CREATE TABLE qa AS SELECT 'question ' || i AS q, 'answer ' || i AS a FROM range(12) t(i)")
    [(job,)] = con.execute("SELECT finetune('CREATE', 'm', ?, 'SELECT q AS prompt, a AS completion FROM qa', "
                           "NULL, '{\"max_epochs\": 2, \"batch_size\": 4}')", [tiny_model_path]).fetchall()
    out = io.StringIO()
    assert progress.watch(con, job, out=out, live=True, interval=0.1) == "SUCCESS"
    text = out.getvalue()
    assert "\x1b[" in text and "step" in text  # drawn with terminal codes
    assert f"{job} SUCCESS in " in text and "model main.m (loss " in text
    history = progress.Reader(con, job)
    state = history.read()
    assert state.status == "SUCCESS" and state.step == state.total_steps == 6 and state.tokens_per_s > 0
    shell = Shell(con, out=io.StringIO(), err=io.StringIO())
    assert shell.run_command(".wait")  # nothing running: says so
    assert shell.out.getvalue() == "No fine-tuning job is running.\n"
    con.close()


# ------------------------------------------------------------------------------------ typed into a terminal


# prompt_toolkit switches bracketed paste on as it draws the prompt and off when Enter accepts the input: the
# prompt itself is drawn with cursor moves ("D", backspace, right), so these are what says where the shell is.
PROMPT = "\x1b[?2004h"
ACCEPTED = "\x1b[?2004l"


def _deaf_to_ctrl_c() -> None:
    """What a careless parent leaves a child (a background job of a script; a test runner's worker did it to the
    shell in CI): SIGINT ignored and blocked."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads so far (Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_for_cpu(pid: int, seconds: float, limit: float = 60.0) -> None:
    """Return once the process has used ``seconds`` more CPU time than now (it is computing), within ``limit``."""
    start, deadline = _cpu_seconds(pid), time.monotonic() + limit
    while _cpu_seconds(pid) - start < seconds:
        assert time.monotonic() < deadline, f"the process used under {seconds} s of CPU in {limit} s"
        time.sleep(0.05)


@pytest.fixture
def terminal(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "DUCKDB_FT_HISTORY": str(tmp_path / "history"), "PROMPT_TOOLKIT_NO_CPR": "1",
           "TERM": "xterm", "NO_COLOR": "1"}
    child = pexpect.spawn(COMMAND[0], COMMAND[1:] + [str(tmp_path / "t.duckdb")], env=env, encoding="utf-8",
                          dimensions=(40, 100), timeout=60, preexec_fn=_deaf_to_ctrl_c)
    child.logfile_read = io.StringIO()  # everything the terminal showed
    child.expect_exact('Enter ".help"')
    child.expect_exact(PROMPT)
    yield child
    child.close(force=True)


@pytest.mark.slow
def test_interactive_session(terminal, tmp_path):
    import pexpect

    child = terminal
    # A statement over two lines: the first Enter continues it, the ';' ends it.
    child.send("SELECT 1 AS a,\r")
    child.expect_exact("‣")
    child.send("  'two' AS b;\r")
    child.expect_exact("│ int32 │ varchar │")
    child.expect_exact("│     1 │ two     │")
    child.expect_exact(PROMPT)
    # A dot command.
    child.send(".mode csv\r")
    child.expect_exact(PROMPT)
    child.send("SELECT 42 AS answer;\r")
    child.expect_exact("answer\r\n42\r\n")
    child.expect_exact(PROMPT)
    # An error: one message, and the shell goes on.
    child.send("SELECT * FROM nope;\r")
    child.expect_exact("Catalog Error:")
    child.expect_exact("Table with name nope does not exist!")
    child.expect_exact(PROMPT)
    # Ctrl-C stops a long statement, not the shell.
    child.send("SELECT count(*) FROM range(10000000000) t(i) WHERE i % 7 = 3;\r")
    child.expect_exact(ACCEPTED)
    # Ctrl-C once the statement runs (DuckDB's threads have used a CPU second since Enter), though the shell's parent
    # left SIGINT ignored and blocked (the fixture's preexec_fn): the shell owns its Ctrl-C.
    _wait_for_cpu(child.pid, seconds=1.0)
    child.sendintr()
    child.expect_exact("Interrupted.")
    child.expect_exact(PROMPT)
    child.send("SELECT 'still here' AS alive;\r")
    child.expect_exact("alive\r\nstill here\r\n")
    child.expect_exact(PROMPT)
    # Ctrl-C at the prompt drops the line; .quit leaves.
    child.send("SELECT 'never run'")
    child.sendintr()
    child.expect_exact(PROMPT)
    child.send(".quit\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in child.logfile_read.getvalue()
    history = (tmp_path / "history").read_text()
    assert "+SELECT 1 AS a,\n+  'two' AS b;" in history and "+.quit" in history
