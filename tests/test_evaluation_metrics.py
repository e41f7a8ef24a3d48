"""EVALUATE's metrics, significance tests and sql_match sandbox, without a model: each metric against a
hand-computed example and against the standard implementation (sacrebleu, rouge-score)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from duckdb_ft.evaluation import metrics as M, significance
from duckdb_ft.evaluation.sqlmatch import Sandbox, extract_sql

PREDS = ["the cat sat on the mat", "a quick brown fox jumps", "SELECT name FROM customers", "", "hello there world"]
REFS = ["the cat is on the mat", "the quick brown fox jumps over", "SELECT name FROM customers", "nothing", "hello world"]


def test_match_metrics_on_hand_computed_examples():
    assert M.exact_match("  SELECT 1 \n", "SELECT 1") == 1.0
    assert M.exact_match("select 1", "SELECT 1") == 0.0
    assert M.normalized_match("Hello,   World!", "hello world") == 1.0
    assert M.normalized_match("Hello World", "hello worlds") == 0.0
    assert M.contains("The answer is Paris, France.", "paris") == 1.0
    assert M.contains("Parisian", "paris") == 0.0  # whole tokens only
    assert M.json_valid('{"a": 1}', "") == 1.0
    assert M.json_valid('Here:\n```json\n[1, 2]\n```', "") == 1.0
    assert M.json_valid("{a: 1}", "") == 0.0


def test_token_f1_by_hand():
    # prediction tokens: the cat sat (3); reference: the cat (2); overlap 2: P = 2/3, R = 1, F1 = 0.8
    assert M.token_f1("The cat sat.", "the cat") == pytest.approx(0.8)
    assert M.token_f1("", "") == 1.0 and M.token_f1("x", "") == 0.0 and M.token_f1("a b", "c d") == 0.0


def test_rouge_l_by_hand_and_equal_to_rouge_score():
    # LCS of "the cat sat on the mat" / "the cat is on the mat" is "the cat on the mat" (5): P = 5/6, R = 5/6
    assert M.text_scores("rouge_l", PREDS[:1], REFS[:1])[0] == pytest.approx(5 / 6)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    expected = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDS, REFS)]
    assert M.text_scores("rouge_l", PREDS, REFS) == pytest.approx(expected)
    values = M.text_scores("rouge_l", PREDS, REFS)
    assert M.corpus_score(M.BUILTIN["rouge_l"], values) == pytest.approx(np.mean(expected))  # the mean F-measure


def test_bleu_and_chrf_equal_sacrebleu_per_sentence_and_per_corpus():
    for name, sentence, corpus in (("bleu", sacrebleu.sentence_bleu, sacrebleu.corpus_bleu),
                                   ("chrf", sacrebleu.sentence_chrf, sacrebleu.corpus_chrf)):
        values = M.text_scores(name, PREDS, REFS)
        assert values == pytest.approx([sentence(p, [r]).score for p, r in zip(PREDS, REFS)])
        got = M.corpus_score(M.BUILTIN[name], values, PREDS, REFS)
        assert got == pytest.approx(corpus(PREDS, [REFS]).score, abs=1e-9)
        assert got != pytest.approx(np.mean(values))  # a corpus score, not the mean of sentence scores
    assert M.text_scores("bleu", ["SELECT name FROM customers"], ["SELECT name FROM customers"]) == [pytest.approx(100.0)]


def test_bleu_by_hand():
    # "the cat sat on the mat" against "the cat is on the mat": 5/6 unigrams, 3/5 bigrams, 1/4 trigrams and 0/3
    # 4-grams match; sacrebleu's default "exp" smoothing counts the first zero as 1/(2 * 3). Same lengths: BP 1.
    hyp, ref = "the cat sat on the mat", "the cat is on the mat"
    expected = 100 * math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(1 / 6)) / 4)
    assert M.corpus_score(M.BUILTIN["bleu"], [0.0], [hyp], [ref]) == pytest.approx(expected, abs=1e-6)


def test_mean_metrics_skip_missing_values():
    assert M.corpus_score(M.BUILTIN["completion_loss"], [1.0, None, 3.0]) == 2.0
    assert M.corpus_score(M.BUILTIN["completion_loss"], [None]) is None


def test_mcnemar_exact_p_values_by_hand():
    a, b = [0] * 6 + [1] * 4, [1] * 6 + [1] * 4  # B alone right on 6 rows, A alone on none
    assert significance.mcnemar(a, b) == (0, 6, pytest.approx(2 / 64))
    a, b = [1, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1]  # 1 against 5: p = 2 * (1 + 6) / 64
    assert significance.mcnemar(a, b)[2] == pytest.approx(14 / 64)
    assert significance.mcnemar([1, 0], [1, 0])[2] == 1.0


def _compare(metric, a, b, preds_a=(), preds_b=(), refs=()):
    m = M.BUILTIN[metric]
    return significance.compare(m, "A", "B", a, b, M.corpus_stats(m, a, preds_a, refs),
                                M.corpus_stats(m, b, preds_b, refs))


def test_comparison_says_better_only_beyond_noise():
    clear = _compare("sql_match", [0.0] * 20, [1.0] * 18 + [0.0] * 2)
    assert clear["test"] == "mcnemar" and clear["significant"] and clear["better"] == "B"
    assert (clear["wins"], clear["ties"], clear["losses"]) == (18, 2, 0)
    assert clear["difference"] == pytest.approx(0.9) and clear["ci_low"] > 0.7 and clear["ci_high"] <= 1.0
    noise = _compare("sql_match", [1.0, 0.0] * 10, [0.0, 1.0] * 10)
    assert not noise["significant"] and noise["better"] is None and noise["difference"] == 0
    loss = _compare("completion_loss", [2.0 + 0.01 * i for i in range(30)], [1.0 + 0.01 * i for i in range(30)])
    assert loss["test"] == "paired_bootstrap" and loss["better"] == "B" and loss["wins"] == 30  # lower is better
    assert loss["ci_low"] == pytest.approx(-1.0) and loss["ci_high"] == pytest.approx(-1.0)
    same = _compare("token_f1", [0.5] * 10, [0.5] * 10)
    assert not same["significant"] and same["ties"] == 10


def test_bootstrap_of_corpus_bleu_resamples_statistics():
    refs = [f"select {i} from t where x = {i}" for i in range(12)]
    good = list(refs)
    bad = [f"select * from u" for _ in refs]
    entry = _compare("bleu", M.text_scores("bleu", bad, refs), M.text_scores("bleu", good, refs), bad, good, refs)
    assert entry["b_score"] == pytest.approx(100.0) and entry["a_score"] == pytest.approx(
        sacrebleu.corpus_bleu(bad, [refs]).score)
    assert entry["better"] == "B" and entry["ci_low"] > 50


def test_sandbox_execution_match():
    def setup(con):
        con.execute("CREATE TABLE t AS SELECT i AS id, i % 3 AS g, i * 1.005 AS v FROM range(10) r(i)")

    with Sandbox(setup=setup) as box:
        assert box.match("```sql\nSELECT g, count(*) FROM t GROUP BY g;\n```", "SELECT g, count(*) FROM t GROUP BY 1")
        assert box.match("SELECT id FROM t ORDER BY id DESC", "SELECT id FROM t")  # a multiset: order ignored
        assert not box.match("SELECT id FROM t ORDER BY id DESC", "SELECT id FROM t ORDER BY id")
        assert box.match("SELECT avg(v)::DECIMAL(10, 4) FROM t", "SELECT avg(v) FROM t")  # numbers to 2 decimals
        assert not box.match("SELECT id FROM t WHERE id > 0", "SELECT id FROM t")
        assert not box.match("SELECT * FROM nope", "SELECT id FROM t")
        assert not box.match("DROP TABLE t", "SELECT id FROM t")
        assert not box.match("SELECT * FROM read_csv('/etc/passwd')", "SELECT id FROM t")
        assert not box.match(None, "SELECT id FROM t")
        assert box.result("SELECT count(*) FROM t") == [(10,)]
    assert extract_sql("Here you go:\n```sql\nSELECT 1;\n```") == "SELECT 1"


def test_interval_of_one_model_brackets_its_score():
    m = M.BUILTIN["token_f1"]
    values = [0.2, 0.4, 0.6, 0.8] * 5
    low, high = significance.interval(m, M.corpus_stats(m, values))
    assert low < 0.5 < high and 0.2 <= low and high <= 0.8
    assert significance.interval(m, M.corpus_stats(m, [1.0] * 5)) == [1.0, 1.0]


def test_the_shell_line_of_a_running_evaluation(monkeypatch):
    import io
    import time

    from duckdb_ft.evaluation import evaluate
    from duckdb_ft.shell import progress, repl

    assert progress.evaluation_line("s1") is None
    monkeypatch.setitem(evaluate.RUNNING, "s1", {"id": "ev_1", "model": "shop_sql", "done": 64, "total": 128,
                                                "started": time.monotonic() - 10})
    line = progress.evaluation_line("s1")
    assert line.startswith("ev_1  EVALUATE  64/128 rows  model shop_sql  ETA 0:00:1")
    err = io.StringIO()
    shown = repl._EvaluationProgress(err, "s1")
    shown.update()
    assert err.getvalue() == ""  # nothing in the first 2 s
    shown.began -= 3
    shown.update()
    shown.update()  # the same line: not repeated
    evaluate.RUNNING["s1"].update(model="other")
    shown.update()  # another model: a new plain line at once
    assert err.getvalue().count("\n") == 2 and "model other" in err.getvalue()


def test_label_accuracy_reads_labels_from_any_side():
    assert M.label_accuracy('{"labels": ["billing"]}', "billing") == 1.0
    assert M.label_accuracy(" Billing ", '["billing"]') == 1.0
    assert M.label_accuracy('{"labels": ["a", "b"]}', '["b", "a"]') == 1.0
    assert M.label_accuracy('{"labels": ["a"]}', '["a", "b"]') == 0.0
    assert M.label_accuracy("bugs", "billing") == 0.0


def test_json_schema_valid_checks_the_schema_option():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    s = M.Scoring(ids=["1", "2", "3", "4"], prompts=[""] * 4, refs=[""] * 4, schema=schema,
                  preds=['{"n": 3}', 'Here:\n```json\n{"n": 4}\n```', '{"n": "3"}', None])
    assert M.BUILTIN["json_schema_valid"].score(s) == [1.0, 1.0, 0.0, 0.0]
