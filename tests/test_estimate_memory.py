"""ESTIMATE in bounded memory: its scratch database (``prep.scratch``) has a memory limit of its own and spills to
a directory of its own, leaves the user's connection's settings alone, gives the report it gives unspilled, and
leaves no file behind when ESTIMATE fails midway or the user's query fails; the token statistics kept as
histograms equal numpy's over the whole arrays."""

from __future__ import annotations

import json
import os
import tempfile

import duckdb
import numpy as np
import pytest

from duckdb_ft.prep import clean, duplicates, report as prep_report, scratch

OPTIONS = json.dumps({"max_epochs": 1, "max_seq_length": 64, "pii": "mask"})
QUERY = "SELECT q AS prompt, a AS completion FROM orders"


def _estimate(con, model, query=QUERY):
    return json.loads(con.execute("SELECT finetune('ESTIMATE', ?, ?, NULL, ?)", [model, query, OPTIONS]).fetchall()[0][0])


@pytest.fixture
def orders(con):
    """200,000 short rows: more than an 8 MiB scratch database holds (about 15 MB of text)."""
    con.execute("""CREATE TABLE orders AS SELECT i, 'What is the status of order ' || i || '?' AS q,
                   CASE WHEN i % 1000 = 7 THEN 'Mail ann' || i || '@example.com' ELSE 'Order ' || i || ' shipped.'
                   END AS a FROM range(200000) t(i)""")
    return con


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The temporary directory ESTIMATE's scratch folder goes to; its scratch folders, listed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return lambda: [p for p in os.listdir(tmp_path) if p.startswith(scratch.PREFIX)]


def _settings(con):
    return con.execute("SELECT current_setting('memory_limit'), current_setting('temp_directory'), "
                       "current_setting('threads')").fetchall()


@pytest.mark.slow
def test_a_failure_midway_leaves_no_spilled_file_table_or_job(orders, tiny_model_path, private_tmp, monkeypatch):
    monkeypatch.setenv(scratch.MEMORY_ENV, "8MiB")
    seen = {}

    def failing(cur, st, **kwargs):  # after staging, which spilled: the staged rows do not fit in 8 MiB
        folder = os.path.join(tempfile.gettempdir(), private_tmp()[0], "spill")
        seen["files"] = os.listdir(folder)
        seen["limit"] = cur.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        seen["rows"] = cur.execute(f"SELECT count(*) FROM {st.table}").fetchall()[0][0]
        raise RuntimeError("failed midway")

    monkeypatch.setattr(clean, "analyze", failing)
    settings, tables = _settings(orders), orders.execute("SELECT count(*) FROM duckdb_tables()").fetchall()
    with pytest.raises(duckdb.Error, match="failed midway"):
        _estimate(orders, tiny_model_path)
    assert seen["rows"] == 200000 and seen["limit"] == "8.0 MiB"
    assert any(f.endswith(".tmp") for f in seen["files"]), seen["files"]
    assert private_tmp() == []
    assert _settings(orders) == settings
    assert orders.execute("SELECT count(*) FROM duckdb_tables()").fetchall() == tables
    assert orders.execute("SELECT count(*) FROM duckdb_ft.jobs").fetchall() == [(0,)]


def test_a_user_query_failing_while_streamed_leaves_no_file(orders, tiny_model_path, private_tmp, monkeypatch):
    monkeypatch.setenv(scratch.MEMORY_ENV, "8MiB")
    query = "SELECT q AS prompt, CASE WHEN i = 150000 THEN error('bad order') ELSE a END AS completion FROM orders"
    with pytest.raises(duckdb.Error, match="reading the training data failed: .*bad order"):
        _estimate(orders, tiny_model_path, query)
    assert private_tmp() == []


@pytest.mark.slow
def test_the_report_under_a_small_memory_limit_equals_the_report_without(con, tiny_model_path, private_tmp,
                                                                         monkeypatch):
    con.execute("""CREATE TABLE orders AS SELECT 'Question ' || j || ': ' || repeat(chr((97 + j % 26)::INTEGER),
                   (1 + j % 40)::INTEGER) AS q, CASE WHEN j % 700 = 5 THEN 'Card 4111 1111 1111 1111'
                   ELSE 'Answer ' || (j % 97) END AS a
                   FROM (SELECT CASE WHEN i % 50 = 3 THEN i - 3 ELSE i END AS j FROM range(20000) t(i))""")
    con.execute("SET threads = 2")  # the scratch database's, too: the memory a thread needs, whatever the machine
    monkeypatch.setenv(scratch.MEMORY_ENV, "1GiB")
    roomy = _estimate(con, tiny_model_path)
    used = {}
    real = prep_report.tokens

    def spy(cur, *args):
        used["limit"] = cur.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        return real(cur, *args)

    monkeypatch.setattr(prep_report, "tokens", spy)
    monkeypatch.setenv(scratch.MEMORY_ENV, "32MiB")  # about what the near-duplicate pass's joins need here
    small = _estimate(con, tiny_model_path)
    assert used["limit"] == "32.0 MiB"
    for report in (small, roomy):  # the first ESTIMATE calibrated, the second read the calibration it cached
        report["cost"]["calibration"].pop("cached")
    assert small == roomy and roomy["duplicates"]["exact_duplicate_rows"] == 400
    assert private_tmp() == []


def test_running_out_of_the_scratch_memory_says_which_limit_to_raise(orders, tiny_model_path, private_tmp,
                                                                     monkeypatch):
    monkeypatch.setenv(scratch.MEMORY_ENV, "8MiB")  # holds the staged rows (spilled), not the joins after
    with pytest.raises(duckdb.Error, match=f"ESTIMATE ran out of memory .*8MiB.*{scratch.MEMORY_ENV}"):
        _estimate(orders, tiny_model_path)
    assert private_tmp() == []


def test_a_bad_memory_limit_is_a_clear_error_that_changes_nothing(orders, tiny_model_path, private_tmp,
                                                                   monkeypatch):
    monkeypatch.setenv(scratch.MEMORY_ENV, "lots")
    settings = _settings(orders)
    with pytest.raises(duckdb.Error, match=f"ESTIMATE's memory limit 'lots' .*{scratch.MEMORY_ENV}.*'1GiB'"):
        _estimate(orders, tiny_model_path)
    assert private_tmp() == [] and _settings(orders) == settings


def test_token_histograms_give_numpys_percentiles_sums_and_top_sums():
    rng = np.random.default_rng(3)
    for n in [1, 2, 3, 19, 20, 21, 100, 4097, 100003]:
        x = rng.integers(0, 1 + rng.integers(1, 3000), n)
        h = prep_report.Counts()
        for part in np.array_split(x, 7):
            h.add(part)
        top = np.sort(x)[::-1]
        assert h.stats() == {"min": x.min(), "p50": int(np.percentile(x, 50, method="lower")),
                             "p95": int(np.percentile(x, 95, method="lower")), "max": x.max(), "total": x.sum()}
        assert [h.top_sum(k) for k in (1, n // 20 + 1, n, n + 3)] == [top[:k].sum() for k in
                                                                       (1, n // 20 + 1, n, n + 3)]
    assert prep_report.Counts().stats() == {"min": 0, "p50": 0, "p95": 0, "max": 0, "total": 0}


@pytest.mark.slow
def test_the_findings_in_small_chunks_equal_the_findings_in_one(con, tiny_model_path, monkeypatch):
    """Near duplicates verified a few prompts per statement, signatures and personal data a few rows per batch:
    the same per-row findings and the same report as in one statement and one batch."""
    con.execute("""CREATE TABLE orders AS SELECT 'What is the status of order ' || (10000 + j) || '?' AS q,
                   CASE WHEN j % 9 = 2 THEN 'Mail ann' || j || '@example.com or 4111 1111 1111 1111'
                   ELSE 'Shipped ' || (j % 13) END AS a FROM (SELECT i % 900 AS j FROM range(1000) t(i))""")
    args = [tiny_model_path, "SELECT q AS prompt, a AS completion FROM orders", None, OPTIONS]

    def run():
        report = json.loads(con.execute("SELECT finetune('ESTIMATE', ?, ?, ?, ?)", args).fetchall()[0][0])
        report["cost"]["calibration"].pop("cached")
        return report, con.execute("FROM finetune_data_report(?, ?, ?, ?) ORDER BY ALL", args).fetchall()

    whole = run()
    monkeypatch.setattr(duplicates, "CANDIDATE_CHUNK", 7)
    monkeypatch.setattr(duplicates, "SIGNATURE_BATCH", 11)
    monkeypatch.setattr(clean, "MASK_BATCH", 5)
    chunked = run()
    assert chunked == whole
    kinds = {r[3] for r in whole[1]}
    assert {"exact_duplicate", "near_duplicate", "pii"} <= kinds and len(whole[1]) > 500
