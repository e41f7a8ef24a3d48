"""marimo with the real marimo: ``notebooks/marimo_quickstart.py`` runs headless (a DataFrame named in SQL, FINETUNE
and COMPLETE in ``mo.sql`` cells on marimo's own DuckDB engine), and one ``duckdb_ft.install`` on DuckDB's default
connection is what marimo's default engine needs, even once that connection's Python object was collected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import python_output

pytest.importorskip("marimo")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_marimos_default_engine_has_the_functions_after_installing_on_the_default_connection():
    out = python_output(
        "import gc, json, duckdb, duckdb_ft, marimo as mo\n"
        "duckdb_ft.install(duckdb.default_connection())\n"
        "gc.collect()  # the connection's Python object is gone; the connection and its session are not\n"
        "frame = mo.sql(\"SELECT finetune('SHOW') AS jobs, snowflake.cortex.finetune('SHOW') AS cortex\")\n"
        "print(json.dumps(frame.to_dict('records')))")
    assert json.loads(out.splitlines()[-1]) == [{"jobs": "[]", "cortex": "[]"}]


@pytest.mark.slow
def test_the_marimo_notebook_runs_headless_trains_and_answers(tiny_model_path):
    out = python_output(
        "import json, sys\n"
        f"sys.path.insert(0, {str(NOTEBOOKS)!r})\n"
        "from marimo_quickstart import app\n"
        "outputs, defs = app.run()\n"
        "print(json.dumps({'status': defs['status'], 'pairs': int(defs['pairs']['pairs'][0]),\n"
        "                  'answers': defs['answers']['answer'].tolist()}))",
        DUCKDB_FT_NOTEBOOK_MODEL=tiny_model_path, OMP_NUM_THREADS="1")
    got = json.loads(out.splitlines()[-1])
    assert got["status"] == "SUCCESS" and got["pairs"] == 8
    assert len(got["answers"]) == 3 and all(got["answers"])
