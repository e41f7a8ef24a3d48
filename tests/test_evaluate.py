"""finetune('EVALUATE'): two models on the same rows, per-row results in SQL, the summary's numbers recomputed
from the stored predictions, the comparison, retention, cancelling; bad input and missing privileges are clear
errors before any generation that leave the catalog as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

import duckdb_ft
from conftest import allow_base_model, catalog_counts
from duckdb_ft.errors import FtError, Interrupted, InvalidArgument, ModelNotFound, NotFound, PermissionDenied
from duckdb_ft.evaluation import evaluate as evaluate_module
from duckdb_ft.ml import complete as completion

Q = "SELECT id, q AS prompt, a AS completion FROM main.pairs"
SQL_Q = "SELECT id, q AS prompt, gold AS completion FROM main.pairs"


@pytest.fixture(scope="module")
def db(tmp_path_factory, tiny_model_path):
    path = str(tmp_path_factory.mktemp("eval") / "eval.duckdb")
    admin = duckdb_ft.connect(path)
    admin.execute("""CREATE TABLE pairs AS SELECT i AS id, 'What is item ' || i || '?' AS q, 'item ' || i AS a,
                     'SELECT name FROM items WHERE id = ' || i AS gold FROM range(1, 21) t(i)""")
    admin.execute("CREATE TABLE items AS SELECT i AS id, 'thing ' || i AS name FROM range(1, 21) t(i)")
    admin.execute("CREATE TABLE secret AS SELECT 'x' AS prompt, 'y' AS completion")
    admin.execute("CREATE SCHEMA ml")
    job = admin.execute("SELECT finetune('CREATE', 'ml.tuned', ?, ?, NULL, ?)",
                        [tiny_model_path, "SELECT q AS prompt, a AS completion FROM pairs",
                         json.dumps({"max_epochs": 1, "batch_size": 8})]).fetchall()[0][0]
    assert duckdb_ft.wait(admin, job) == "SUCCESS"
    for stmt in ["CREATE ROLE analyst", "CREATE ROLE outsider", "GRANT USAGE ON SCHEMA main TO ROLE analyst",
                 "GRANT USAGE ON SCHEMA ml TO ROLE analyst", "GRANT SELECT ON TABLE pairs TO ROLE analyst",
                 "GRANT SELECT ON TABLE items TO ROLE analyst", "GRANT USAGE ON MODEL ml.tuned TO ROLE analyst",
                 "GRANT USAGE ON SCHEMA main TO ROLE outsider", "GRANT SELECT ON TABLE pairs TO ROLE outsider",
                 "GRANT ROLE analyst TO USER alice", "GRANT ROLE outsider TO USER eve"]:
        admin.execute(stmt).fetchall()
    allow_base_model(admin, tiny_model_path)  # the folder is a base model every role may name
    users = {u: duckdb_ft.connect(path, user=u) for u in ("alice", "eve")}
    yield {"admin": admin, "base": tiny_model_path, **users}
    for c in users.values():
        c.close()
    admin.close()


def evaluate(con, models, query=Q, options=None):
    models = models if isinstance(models, str) else json.dumps(models)
    args = [models, query] + ([json.dumps(options) if isinstance(options, dict) else options] if options else [])
    marks = ", ".join("?" * len(args))
    return json.loads(con.execute(f"SELECT finetune('EVALUATE', {marks})", args).fetchall()[0][0])


#: The catalog tables an evaluation writes, and those it must leave alone.
EVALUATION_TABLES = ("evaluations", "evaluation_rows", "jobs", "models")


METRICS = ["exact_match", "normalized_match", "contains", "token_f1", "rouge_l", "bleu", "chrf", "json_valid",
           "completion_loss", {"name": "short", "sql": "length(prediction) < 12"},
           {"name": "words", "sql": "length(string_split(prediction, ' '))"}]


@pytest.mark.slow
def test_two_models_on_the_same_rows_stored_scored_and_compared(db):
    admin, base = db["admin"], db["base"]
    out = evaluate(admin, [base, "ml.tuned"], options={"metrics": METRICS, "max_tokens": 6})
    names = [m if isinstance(m, str) else m["name"] for m in METRICS]
    assert out["rows"] == 20 and out["skipped_rows"] == 0 and out["metrics"] == names
    assert set(out["models"]) == {base, "ml.tuned"}
    rows = admin.execute("FROM finetune_evaluation(?)", [out["evaluation_id"]]).df()
    assert list(rows.columns[:5]) == ["id", "model", "prompt", "completion", "prediction"]
    assert {"bleu", "chrf", "rouge_l", "completion_loss", "prompt_tokens", "completion_tokens", "latency_ms",
            "user_metrics"} <= set(rows.columns)
    assert len(rows) == 40 and list(rows["model"].unique()) == [base, "ml.tuned"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for name, got in rows.groupby("model", sort=False):
        summary = out["models"][name]
        preds, refs = got["prediction"].tolist(), got["completion"].tolist()
        assert got["id"].tolist() == [str(i) for i in range(1, 21)]
        assert summary["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
        assert summary["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
        assert summary["rouge_l"] == pytest.approx(np.mean([scorer.score(r, p)["rougeL"].fmeasure
                                                           for p, r in zip(preds, refs)]))
        assert summary["exact_match"] == pytest.approx(np.mean([p.strip() == r for p, r in zip(preds, refs)]))
        assert summary["short"] == pytest.approx(np.mean([len(p) < 12 for p in preds]))
        assert [m["short"] for m in got["user_metrics"]] == [float(len(p) < 12) for p in preds]
        assert summary["completion_loss"] == pytest.approx(got["completion_loss"].mean()) and \
            summary["completion_loss"] > 0
        assert summary["completion_tokens"] == got["completion_tokens"].sum() <= 6 * 20
        assert summary["prompt_tokens"] == got["prompt_tokens"].sum() > 0 and summary["mean_latency_ms"] > 0
        low, high = summary["intervals"]["token_f1"]
        assert low <= summary["token_f1"] <= high and set(summary["intervals"]) == set(names)
        assert got["sql_match"].isna().all()  # not asked for
    comparison = out["comparison"]
    assert len(comparison) == len(METRICS) and {c["a"] for c in comparison} == {base}
    tests = {c["metric"]: c["test"] for c in comparison}
    assert tests["exact_match"] == tests["short"] == "mcnemar" and tests["bleu"] == tests["words"] == "paired_bootstrap"
    for c in comparison:
        assert c["wins"] + c["ties"] + c["losses"] == c["rows"] == 20
        assert c["ci_low"] <= c["difference"] <= c["ci_high"] or c["metric"] in ("bleu", "chrf")
        assert 0 <= c["p_value"] <= 1 and c["better"] in (None, base, "ml.tuned")
    # The tuned model was trained on exactly these pairs: its loss on the references is lower, beyond noise.
    loss = next(c for c in comparison if c["metric"] == "completion_loss")
    assert loss["difference"] < 0 and loss["better"] == "ml.tuned", loss

    table = admin.execute("FROM finetune_comparison(?)", [out["evaluation_id"]]).df()
    keys = ("metric", "a", "b", "wins", "ties", "losses", "test", "significant")
    assert [{k: r[k] for k in keys} for r in table.to_dict("records")] == [{k: c[k] for k in keys} for c in comparison]
    assert table["p_value"].tolist() == pytest.approx([c["p_value"] for c in comparison])

    listed = admin.execute("FROM finetune_evaluations()").fetchall()
    assert (out["evaluation_id"], "SUCCESS") in [(r[0], r[1]) for r in listed]
    shown = json.loads(admin.execute("SELECT finetune('SHOW EVALUATIONS')").fetchall()[0][0])
    assert out["evaluation_id"] in [e["id"] for e in shown]
    described = json.loads(admin.execute("SELECT finetune('DESCRIBE EVALUATION', ?)",
                                         [out["evaluation_id"]]).fetchall()[0][0])
    assert described["status"] == "SUCCESS" and described["progress"] == 1.0 and described["summary"] == out


def test_predictions_are_what_complete_returns(db):
    """The same rows, batched as COMPLETE batches them: every prediction is COMPLETE's answer."""
    admin, base = db["admin"], db["base"]
    out = evaluate(admin, base, Q, {"max_tokens": 8, "metrics": ["exact_match"]})
    got = admin.execute("SELECT id, prediction FROM finetune_evaluation(?)", [out["evaluation_id"]]).fetchall()
    alone = admin.execute("""SELECT id::VARCHAR, complete(?, q, '{"max_tokens": 8}')::JSON->>'$.choices[0].messages'
                             FROM pairs ORDER BY id""", [base]).fetchall()
    assert got == alone and out["comparison"] == []


def test_sql_match_runs_predictions_on_copies_of_what_the_references_read(db, monkeypatch):
    admin, base = db["admin"], db["base"]
    answers = {"What is item 1?": "```sql\nSELECT name FROM items WHERE id = 1;\n```",
               "What is item 2?": "SELECT name FROM items WHERE id = 3", "What is item 3?": "DROP TABLE items"}

    def fake_generate(loaded, requests, adapter=None, *, fail_fast=False):
        for r in requests:
            r.result = completion.Completion(answers.get(r.messages[0]["content"], "no idea"), 5, 3)

    monkeypatch.setattr(completion, "generate", fake_generate)
    out = evaluate(admin, base, SQL_Q + " WHERE id <= 4", {"metrics": ["sql_match"]})
    rows = admin.execute("SELECT id, sql_match FROM finetune_evaluation(?)", [out["evaluation_id"]]).fetchall()
    assert rows == [("1", 1.0), ("2", 0.0), ("3", 0.0), ("4", 0.0)]
    assert out["models"][base]["sql_match"] == 0.25
    assert admin.execute("SELECT count(*) FROM items").fetchall() == [(20,)]  # the DROP ran nowhere


def test_sql_match_on_another_database_file(db, monkeypatch, tmp_path):
    import duckdb

    other = str(tmp_path / "other.duckdb")
    with duckdb.connect(other) as c:
        c.execute("CREATE TABLE items AS SELECT i AS id, 'other ' || i AS name FROM range(1, 21) t(i)")
    monkeypatch.setattr(completion, "generate", lambda loaded, requests, adapter=None, **k: [
        setattr(r, "result", completion.Completion("SELECT 'other 1' AS name", 1, 1)) for r in requests])
    out = evaluate(db["admin"], db["base"], SQL_Q + " WHERE id <= 2",
                   {"metrics": ["sql_match"], "sql_database": other})
    rows = db["admin"].execute("SELECT id, sql_match FROM finetune_evaluation(?)", [out["evaluation_id"]]).fetchall()
    assert rows == [("1", 1.0), ("2", 0.0)]  # the references ran on the other file's items


@pytest.mark.slow
def test_retention_compares_a_tuned_model_with_its_base(db):
    out = evaluate(db["admin"], "ml.tuned", "SELECT 'What is item 1?' AS prompt, 'item 1' AS completion",
                   {"metrics": ["exact_match"], "max_tokens": 4, "retention": True})
    r = out["retention"]["ml.tuned"]
    assert r["base_model"] == db["base"] and r["prompts"] == 36
    assert 0 <= r["agreement"] <= 1 and 0 <= r["rouge_l"] <= 1
    assert r["base_answer_loss_base"] > 0 and r["loss_increase"] == pytest.approx(
        r["base_answer_loss_tuned"] - r["base_answer_loss_base"])


def test_interrupt_stops_between_batches_and_marks_the_evaluation_cancelled(db, monkeypatch):
    admin = db["admin"]
    real = completion.generate
    calls = []

    def interrupting(loaded, requests, adapter=None, *, fail_fast=False):
        calls.append(len(requests))
        admin.session.interrupted.set()  # as Connection.interrupt() / Ctrl-C does while the first batch runs
        return real(loaded, requests, adapter, fail_fast=fail_fast)

    monkeypatch.setattr(completion, "generate", interrupting)
    monkeypatch.setattr(evaluate_module, "CHUNK_ROWS", 16)
    before = catalog_counts(admin, EVALUATION_TABLES)
    with pytest.raises(Interrupted):
        evaluate(admin, db["base"], Q, {"max_tokens": 2, "metrics": ["exact_match"]})
    assert calls == [16]  # 20 rows: the second batch never started
    last = admin.execute("SELECT status, progress FROM duckdb_ft.evaluations ORDER BY created_on DESC LIMIT 1"
                         ).fetchall()[0]
    assert last == ("CANCELLED", 0.8)
    after = catalog_counts(admin, EVALUATION_TABLES)
    assert {t: after[t] for t in EVALUATION_TABLES[1:]} == {t: before[t] for t in EVALUATION_TABLES[1:]}  # no rows


BAD = [
    ("unknown metric", "ml.tuned", Q, {"metrics": ["exact_match", "accuracy"]}, InvalidArgument,
     "unknown metric 'accuracy'; valid metrics: exact_match"),
    ("metrics not a list", "ml.tuned", Q, {"metrics": "bleu"}, InvalidArgument, "metrics must be a non-empty list"),
    ("metric twice", "ml.tuned", Q, {"metrics": ["bleu", "bleu"]}, InvalidArgument, "names a metric twice"),
    ("unknown option", "ml.tuned", Q, {"temprature": 0}, InvalidArgument, "unknown EVALUATE option(s): temprature"),
    ("model does not exist", '["ml.tuned", "no_such_model"]', Q, None, ModelNotFound, "no_such_model"),
    ("malformed model list", '["ml.tuned", ', Q, None, InvalidArgument, "the model list is not valid JSON"),
    ("model list of numbers", "[1, 2]", Q, None, InvalidArgument, "non-empty array of model names"),
    ("model twice", '["ml.tuned", "ml.tuned"]', Q, None, InvalidArgument, "names a model twice"),
    ("query without completion", "ml.tuned", "SELECT q AS prompt FROM pairs", None, InvalidArgument,
     "must return columns prompt and completion"),
    ("not a query", "ml.tuned", "DELETE FROM pairs", None, InvalidArgument, "must be a SELECT"),
    ("no rows", "ml.tuned", Q + " WHERE false", None, InvalidArgument, "returned no row"),
    ("user metric does not bind", "ml.tuned", Q, {"metrics": [{"name": "x", "sql": "lenght(prediction)"}]},
     InvalidArgument, "user metric 'x' fails"),
    ("user metric smuggles a clause", "ml.tuned", Q,
     {"metrics": [{"name": "x", "sql": "1) AS value FROM __ft_eval_rows WHERE (true"}]}, InvalidArgument,
     "one expression"),
    ("user metric of text", "ml.tuned", Q, {"metrics": [{"name": "x", "sql": "upper(prediction)"}]},
     InvalidArgument, "must be BOOLEAN or a number"),
    ("user metric named as a built-in", "ml.tuned", Q, {"metrics": [{"name": "bleu", "sql": "1"}]},
     InvalidArgument, "taken by a built-in"),
    ("a reference that is not SQL", "ml.tuned", Q, {"metrics": ["sql_match"]}, InvalidArgument,
     "sql_match: the reference completion of row 1"),
    ("a reference that fails", "ml.tuned", "SELECT 'q' AS prompt, 'SELECT nope FROM items' AS completion",
     {"metrics": ["sql_match"]}, InvalidArgument, "not a query that runs"),
    ("a query that calls finetune", "ml.tuned", "SELECT finetune('SHOW') AS prompt, 'x' AS completion", None,
     FtError, "finetune"),
    ("sql_database that is not a file", "ml.tuned", Q, {"metrics": ["sql_match"], "sql_database": "/no/such.db"},
     NotFound, "is not a file"),
]


@pytest.mark.parametrize("label, models, query, options, error, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error_before_any_generation(db, monkeypatch, label, models, query, options, error,
                                                          message):
    admin = db["admin"]
    calls = []
    monkeypatch.setattr(completion, "generate", lambda *a, **k: calls.append(a))
    before = catalog_counts(admin, EVALUATION_TABLES)
    with pytest.raises(error) as e:
        evaluate(admin, models, query, options)
    assert message in str(e.value), str(e.value)
    assert calls == [] and catalog_counts(admin, EVALUATION_TABLES) == before


DENIED = [
    ("no USAGE on the model", "eve", "ml.tuned", Q, None, "USAGE is required"),
    ("no SELECT on a table the query reads", "alice", "ml.tuned", "SELECT * FROM main.secret", None,
     "main.secret"),
    ("a user metric reading a forbidden table", "alice", "ml.tuned", Q,
     {"metrics": [{"name": "x", "sql": "(SELECT count(*) FROM main.secret) > 0"}]}, "main.secret"),
    ("files are for the administrator", "alice", "ml.tuned", "SELECT * FROM read_csv('/etc/passwd')", None,
     "read_csv"),
    ("references reading a forbidden table", "eve", "BASE", "SELECT 'q' AS prompt, "
     "'SELECT * FROM main.items' AS completion", {"metrics": ["sql_match"]}, "main.items"),
    ("sql_database is for the administrator", "alice", "ml.tuned", Q, {"metrics": ["sql_match"],
                                                                      "sql_database": "/tmp/x.duckdb"},
     "administrator only"),
]


@pytest.mark.parametrize("label, user, models, query, options, message", DENIED, ids=[d[0] for d in DENIED])
def test_privileges_are_checked_before_any_generation(db, monkeypatch, label, user, models, query, options,
                                                      message):
    admin = db["admin"]
    calls = []
    monkeypatch.setattr(completion, "generate", lambda *a, **k: calls.append(a))
    before = catalog_counts(admin, EVALUATION_TABLES)
    with pytest.raises(PermissionDenied) as e:
        evaluate(db[user], db["base"] if models == "BASE" else models, query, options)
    assert message in str(e.value), str(e.value)
    assert calls == [] and catalog_counts(admin, EVALUATION_TABLES) == before


def test_evaluations_belong_to_their_creators_role(db):
    alice, eve = db["alice"], db["eve"]
    out = evaluate(alice, "ml.tuned", Q + " WHERE id <= 2", {"metrics": ["exact_match"], "max_tokens": 2})
    ev = out["evaluation_id"]
    assert alice.execute("SELECT count(*) FROM finetune_evaluation(?)", [ev]).fetchall() == [(2,)]
    assert ev in [r[0] for r in alice.execute("FROM finetune_evaluations()").fetchall()]
    assert ev not in [r[0] for r in eve.execute("FROM finetune_evaluations()").fetchall()]
    with pytest.raises(NotFound, match="does not exist"):
        eve.execute("FROM finetune_evaluation(?)", [ev]).fetchall()
    with pytest.raises(NotFound, match="does not exist"):
        eve.execute("SELECT finetune('DESCRIBE EVALUATION', ?)", [ev]).fetchall()
    with pytest.raises(NotFound, match="does not exist"):
        eve.execute("FROM finetune_comparison(?)", [ev]).fetchall()
    assert ev in [r[0] for r in db["admin"].execute("FROM finetune_evaluations()").fetchall()]


def test_errors_keep_their_type_across_the_sql_edge(db):
    with pytest.raises(FtError):
        db["admin"].execute("SELECT finetune('EVALUATE', NULL, 'SELECT 1')").fetchall()
    with pytest.raises(InvalidArgument, match="the query is missing"):
        db["admin"].execute("SELECT finetune('EVALUATE', 'ml.tuned')").fetchall()


def test_completion_loss_is_the_mean_cross_entropy_of_the_completion_tokens(db):
    import torch

    from duckdb_ft.ml import likelihood, models

    loaded = models.load(db["base"])
    tok = loaded.tokenizer
    pairs = [("What is item 1?", "item 1"), ("A longer question, to pad the batch?", "a longer answer here")]
    got = likelihood.completion_losses(loaded, pairs)
    for (prompt, answer), loss in zip(pairs, got):
        user = [{"role": "user", "content": prompt}]
        p = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=False)
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        ids = p_ids + tok(full[len(p):], add_special_tokens=False)["input_ids"]
        with torch.no_grad(), completion._adapter(loaded.model, None):  # the base: earlier tests attached adapters
            logits = loaded.model(input_ids=torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        targets = torch.tensor(ids[1:])
        nll = -logp[torch.arange(len(targets)), targets][len(p_ids) - 1:]  # the completion's tokens only
        assert loss == pytest.approx(float(nll.mean()), rel=1e-4)
