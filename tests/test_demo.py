"""The demo: its data and split are deterministic and sound, scoring executes queries, and a quick run works."""

from __future__ import annotations

import io

import duckdb
import pytest

import duckdb_ft
from duckdb_ft.demo import dataset, run, runner, scoring


@pytest.fixture(scope="module")
def pairs():
    return dataset.make_pairs()


@pytest.fixture(scope="module")
def scorer():
    s = scoring.Scorer()
    yield s
    s.close()


def test_split_is_deterministic_and_held_out_questions_are_unseen(pairs):
    train, test = pairs
    assert (train, test) == dataset.make_pairs()
    assert 200 <= len(train) <= 400 and 40 <= len(test) <= 60
    assert not {p.question for p in test} & {p.question for p in train}
    assert len({p.question for p in train}) == len(train)
    assert {p.unseen for p in test} == {"phrasing", "value"}
    assert {p.template for p in test} == {t.name for t in dataset.TEMPLATES}
    last = {t.name: len(t.phrasings) - 1 for t in dataset.TEMPLATES}
    assert all(p.phrasing < last[p.template] for p in train)  # the last phrasing is never trained on
    assert all(p.phrasing == last[p.template] for p in test if p.unseen == "phrasing")
    values = {}
    for p in train:
        values.setdefault(p.template, set()).add(p.sql)
    assert all(p.sql not in values[p.template] for p in test if p.unseen == "value")


@pytest.mark.slow
def test_gold_queries_score_100_percent_against_themselves(pairs, scorer):
    train, test = pairs
    golds = [p.sql for p in train + test]
    right, marks = scorer.accuracy(golds, golds)
    assert right == len(golds) and all(marks)
    assert all(scorer.result(g) for g in golds), "every gold query returns rows"


def test_wrong_failing_and_unsafe_queries_score_0(scorer):
    gold = "SELECT count(*) FROM customers WHERE city = 'Lyon'"
    assert not scorer.correct("SELECT count(*) FROM customers WHERE city = 'Oslo'", gold)
    assert not scorer.correct("SELECT count(*) FROM customer WHERE city = 'Lyon'", gold)  # fails to bind
    assert not scorer.correct("The answer is 4.", gold)
    assert not scorer.correct("", gold)
    assert not scorer.correct("DELETE FROM customers", gold)
    assert not scorer.correct("SELECT * FROM read_csv('/etc/passwd')", gold)
    assert scorer.result("SELECT count(*) FROM customers") == [(60,)]  # nothing was deleted


def test_results_compare_as_sets_unless_ordered(scorer):
    gold = "SELECT name FROM products WHERE category = 'toys'"
    assert scorer.correct("SELECT name FROM products WHERE category = 'toys' ORDER BY name DESC", gold)
    assert scorer.correct("SELECT p.name AS product FROM products p WHERE p.category = 'toys'", gold)
    ordered = "SELECT name FROM products WHERE category = 'toys' ORDER BY price DESC LIMIT 1"
    assert not scorer.correct("SELECT name FROM products WHERE category = 'toys' ORDER BY price LIMIT 1", ordered)
    assert scorer.correct("SELECT avg(price)::DOUBLE FROM products WHERE category = 'toys'",
                          "SELECT avg(price) FROM products WHERE category = 'toys'")


def test_extract_sql_strips_fences_and_semicolons():
    assert scoring.extract_sql("```sql\nSELECT 1;\n```\nThis query...") == "SELECT 1"
    assert scoring.extract_sql("SELECT 2;") == "SELECT 2"
    assert scoring.extract_sql("```\nSELECT 3\n```") == "SELECT 3"
    assert scoring.extract_sql(None) == ""


def test_prompt_macro_matches_the_python_prompt():
    con = duckdb.connect()
    runner._build(con, lambda *a: None, quick=True)
    q = "How many customers live in Lima?"
    assert con.execute("SELECT sql_prompt(?)", [q]).fetchall()[0][0] == dataset.prompt_for(q)


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path, tiny_model_path):
    path = str(tmp_path / "demo.duckdb")
    out = io.StringIO()
    assert run(path, base_model=tiny_model_path, quick=True, out=out) == 0
    text = out.getvalue()
    assert "execution accuracy of shop_sql" in text and f"lives in {path}" in text
    con = duckdb_ft.connect(path)
    assert con.execute("SELECT count(*) FROM sql_predictions").fetchall()[0][0] == 2 * runner.QUICK_SIZES[1]
    assert con.execute("SELECT status FROM finetune('SHOW')").fetchall() == [("SUCCESS",)]
    con.close()
    # a second run in the same file trains a model of another name
    out = io.StringIO()
    assert run(path, base_model=tiny_model_path, quick=True, out=out) == 0
    assert "'shop_sql_2'" in out.getvalue()
