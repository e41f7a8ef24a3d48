"""duckdb-ft in a marimo notebook: `marimo edit notebooks/marimo_quickstart.py` (or run it: `python
notebooks/marimo_quickstart.py`). One line, `duckdb_ft.install(duckdb.default_connection())`, gives marimo's own
SQL engine (`mo.sql` without an engine) duckdb-ft's functions, with marimo's DuckDB features intact: its schema
browser and DataFrames named in SQL. DUCKDB_FT_NOTEBOOK_MODEL names the base model (the tests use a tiny one)."""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell
def _():
    import json
    import os

    import duckdb
    import marimo as mo
    import pandas as pd

    import duckdb_ft

    # marimo's SQL cells run on DuckDB's default connection: install duckdb-ft there, once.
    duckdb_ft.install(duckdb.default_connection())
    BASE_MODEL = os.environ.get("DUCKDB_FT_NOTEBOOK_MODEL", "smollm2-135m")
    return BASE_MODEL, json, mo, pd


@app.cell
def _(mo):
    mo.md("""
    # duckdb-ft in marimo

    A DataFrame of questions and answers, named in SQL like a table; a model fine-tuned on it with `finetune`; its
    answers with `complete`: all in `mo.sql` cells, on marimo's own DuckDB engine.
    """)
    return


@app.cell
def _(pd):
    cities = ["Oslo", "Lima", "Cairo", "Dublin", "Austin", "Tokyo", "Perth", "Quito"]
    orders = pd.DataFrame({"question": [f"Where is order {100 + i} shipped?" for i in range(len(cities))],
                           "answer": [f"Order {100 + i} ships to {c}." for i, c in enumerate(cities)]})
    return (orders,)


@app.cell
def _(mo, orders):
    # The DataFrame by its name; the job reads a table (it trains in the background, on its own connection).
    _ = mo.sql("CREATE OR REPLACE TABLE order_pairs AS SELECT question AS prompt, answer AS completion FROM orders")
    pairs = mo.sql("SELECT count(*) AS pairs FROM order_pairs")
    return (pairs,)


@app.cell
def _(BASE_MODEL, json, mo, pairs):
    _options = json.dumps({"max_epochs": 2, "learning_rate": 0.001, "version": True})  # each run: a new version
    job = mo.sql(f"""
        SELECT finetune('CREATE', 'orders_bot', '{BASE_MODEL}', 'SELECT prompt, completion FROM order_pairs',
                        NULL, '{_options}') AS job_id
    """)
    job_id = job["job_id"][0]
    status = mo.sql(f"SELECT finetune('WAIT', '{job_id}') AS status")["status"][0]
    mo.md(f"Job `{job_id}` on {pairs['pairs'][0]} pairs: **{status}**")
    return job_id, status


@app.cell
def _(mo, status):
    answers = mo.sql("""
        SELECT question,
               complete('orders_bot', question, '{"max_tokens": 12, "temperature": 0}')::JSON
                   ->> '$.choices[0].messages' AS answer
        FROM orders LIMIT 3
    """) if status == "SUCCESS" else None
    answers
    return (answers,)


if __name__ == "__main__":
    app.run()
