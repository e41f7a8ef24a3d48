"""dbt with the real dbt-core and dbt-duckdb: the sample project ``examples/dbt_project`` (the plugin
``duckdb_ft.dbt``, the package's ``finetune`` and ``evaluation`` materializations and ``metric_at_least`` test, a
COMPLETE model, a grant in a hook) runs ``dbt seed``, ``dbt run`` and ``dbt test`` twice in a row, the second run
adds version v2 of the fine-tuned model, and ``metric_at_least`` fails above the score; the plugin refuses options it
does not know."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

pytest.importorskip("dbt.adapters.duckdb")

ROOT = Path(__file__).resolve().parent.parent

#: dbt's commands, run in one process by dbt's own programmatic runner (each dbt process start costs seconds).
DBT = """
import json, sys
from dbt.cli.main import dbtRunner
project, base = sys.argv[1], sys.argv[2]
args = ["--project-dir", project, "--profiles-dir", project]
ok = []
for command in [["deps"]] + [[c, "--vars", json.dumps({"base_model": base})] for c in ("seed", "run", "test")] * 2:
    result = dbtRunner().invoke(command + args)
    ok.append([command[0], bool(result.success)])
    if not result.success:
        break
# metric_at_least fails when the score is below its threshold (token_f1 is at most 1)
strict = json.dumps({"base_model": base, "min_token_f1": 1.01})
result = dbtRunner().invoke(["test", "--select", "shop_bot_eval", "--vars", strict] + args)
ok.append(["strict test", bool(result.success)])
print("DBT-RESULTS " + json.dumps(ok))
"""


@pytest.mark.slow
def test_the_sample_project_seeds_runs_and_tests_twice_adding_a_version(tmp_path, tiny_model_path):
    project = tmp_path / "dbt_project"
    shutil.copytree(ROOT / "examples" / "dbt_project", project)
    database = tmp_path / "shop.duckdb"
    env = {**__import__("os").environ, "SHOP_DBT_DATABASE": str(database),
           "DUCKDB_FT_DBT_PACKAGE": str(ROOT / "duckdb_ft" / "dbt"), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", DBT, str(project), tiny_model_path], env=env, capture_output=True,
                          text=True, timeout=600)
    results = [json.loads(line.split(" ", 1)[1]) for line in done.stdout.splitlines() if line.startswith("DBT-RESULTS")]
    assert results and results[0] == [[c, True] for c in ["deps"] + ["seed", "run", "test"] * 2] + [
        ["strict test", False]], done.stdout[-4000:] + done.stderr[-2000:]
    assert "Deprecated functionality" not in done.stdout  # the project is written as dbt 1.11 wants it
    con = duckdb.connect(str(database), read_only=True)
    runs = con.execute("SELECT model_version, status FROM shop_bot ORDER BY finished_at").fetchall()
    assert runs == [("v1", "SUCCESS"), ("v2", "SUCCESS")]  # each dbt run added a version
    scores = dict(con.execute("SELECT metric, score FROM shop_bot_eval WHERE model = 'shop_bot'").fetchall())
    assert {"exact_match", "token_f1"} <= set(scores)
    answers = con.execute("SELECT answer FROM answers").fetchall()
    assert len(answers) == 3 and all(a for (a,) in answers)
    con.close()
    import duckdb_ft

    admin = duckdb_ft.connect(str(database), read_only=True)
    versions = admin.execute("SHOW VERSIONS IN MODEL shop_bot").fetchall()
    assert len(versions) == 2
    assert "public" in str(admin.execute("SHOW GRANTS ON MODEL shop_bot").fetchall())  # the post-hook's grant
    admin.close()


def test_the_plugin_refuses_an_unknown_option_and_a_bad_resume_jobs():
    from duckdb_ft.dbt import Plugin

    with pytest.raises(duckdb.Error, match="unknown option.*usr; the options are user, resume_jobs"):
        Plugin("duckdb_ft", {"usr": "alice"})
    with pytest.raises(duckdb.Error, match="resume_jobs is 'yes': use true or false"):
        Plugin("duckdb_ft", {"resume_jobs": "yes"})


def test_the_plugin_installs_as_its_user_on_dbts_connection_and_cursors(tmp_path):
    from duckdb_ft.dbt import Plugin
    from duckdb_ft.surface import cursors

    con = duckdb.connect(str(tmp_path / "x.duckdb"))
    Plugin("duckdb_ft", {"user": "alice"}).configure_connection(con)
    cur = con.cursor()  # dbt-duckdb runs each model on a cursor
    assert cursors.session_of(cur).user == "alice"
    assert cur.execute("SELECT finetune('SHOW')").fetchall() == [("[]",)]
    con.close()
