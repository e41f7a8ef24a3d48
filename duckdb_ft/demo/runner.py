"""The demo, end to end: build a shop and text-to-SQL pairs, score the base model, fine-tune, score again.

Every step is SQL on one DuckDB file, as a user would type it; the demo prints each statement before running it.
Scores are execution accuracy on the held-out questions: ``finetune('EVALUATE')`` with metric ``sql_match``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, TextIO

from ..ml import models
from . import dataset, scoring

DEFAULT_DATABASE = "duckdb_ft_demo.duckdb"
MODEL_NAME = "shop_sql"

#: What a user would set: the epochs and the learning rate; FINETUNE's defaults do the rest (LoRA r 16 on every
#: linear projection, chosen by benchmarks/defaults_study.py).
OPTIONS = {"max_epochs": 3, "learning_rate": 1e-3}
#: The longest gold query is 55 tokens.
COMPLETE_OPTIONS = {"temperature": 0, "max_tokens": 64}

#: ``quick``: a few pairs, one short epoch, a few tokens; for the tests, which check the plumbing, not the score.
QUICK_OPTIONS = {"max_epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "max_seq_length": 192}
QUICK_COMPLETE_OPTIONS = {"temperature": 0, "max_tokens": 8}
QUICK_SIZES = (16, 6)  # training pairs, held-out pairs


@dataclass
class Score:
    model: str
    right: int
    total: int
    seconds: float

    @property
    def percent(self) -> float:
        return 100.0 * self.right / max(1, self.total)

    def __str__(self) -> str:
        return f"{self.right}/{self.total} = {self.percent:.1f}%"


def run(database: str | None = None, *, base_model: str = models.DEFAULT_MODEL, quick: bool = False,
        out: TextIO | None = None) -> int:
    """Run the demo on ``database`` (default ``./duckdb_ft_demo.duckdb``); return an exit code.

    0 when the fine-tuned model scores higher than the base model (with ``quick``: when the job succeeds),
    1 otherwise.
    """
    with warnings.catch_warnings():
        # peft asks transformers a deprecated question when COMPLETE first loads the adapter: nothing to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return _run(database, base_model, quick, out or sys.stdout)


def _run(database: str | None, base_model: str, quick: bool, out: TextIO) -> int:
    import duckdb_ft

    path = os.path.abspath(database or DEFAULT_DATABASE)
    say = _printer(out)
    started = time.perf_counter()
    say(f"duckdb-ft demo: teach {base_model} to answer questions about a shop in SQL, inside DuckDB.")
    say(f"Database file: {path}" + ("" if database else " (the default; `duckdb-ft demo FILE` picks another)"))

    con = duckdb_ft.connect(path)
    try:
        n_train, n_test = _build(con, say, quick)
        complete_opts = QUICK_COMPLETE_OPTIONS if quick else COMPLETE_OPTIONS
        say(f"\n2. The base model on the {n_test} held-out questions (execution accuracy, EVALUATE's sql_match: run "
            "its SQL, compare the result with the right query's).")
        before = _evaluate(con, say, [base_model], complete_opts)[base_model]
        say(f"\n3. Fine-tune {base_model} on the {n_train} training pairs (LoRA; the held-out pairs give the "
            "validation loss).")
        name, job_id, status = _finetune(con, say, out, base_model, QUICK_OPTIONS if quick else OPTIONS)
        if status != "SUCCESS":
            say(f"The fine-tuning job ended {status}; see FROM finetune('SHOW').")
            return 1
        say(f"\n4. The fine-tuned model '{name}' against the base model on the same {n_test} questions.")
        after = _evaluate(con, say, [base_model, name], complete_opts)[name]
        _examples(con, say, base_model, name)
        _summary(con, say, path, base_model, name, job_id, before, after, time.perf_counter() - started)
    except KeyboardInterrupt:
        say("\nInterrupted: running fine-tuning jobs are cancelled.")
        for (job_id,) in con.execute("SELECT id FROM finetune('SHOW') WHERE status IN ('PENDING', 'IN_PROGRESS')"
                                     ).fetchall():
            con.execute("SELECT finetune('CANCEL', ?)", [job_id]).fetchall()
            duckdb_ft.wait(con, job_id, 60)
        return 130
    finally:
        con.close()
    if quick or after.right > before.right:
        return 0
    out.write("The fine-tuned model did not beat the base model.\n")
    return 1


def _printer(out: TextIO):
    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()
    return say


def _show_sql(say, sql: str) -> None:
    say("\n".join("   " + line for line in sql.strip().splitlines()))


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _build(con: Any, say, quick: bool) -> tuple[int, int]:
    """The shop's tables, the pairs table and the prompt macro; returns (training pairs, held-out pairs)."""
    shop = dataset.make_shop()
    train, test = dataset.make_pairs(shop)
    if quick:
        train, test = train[:QUICK_SIZES[0]], test[:QUICK_SIZES[1]]
    dataset.create_tables(con, shop)
    con.execute("CREATE OR REPLACE TABLE sql_pairs (id INTEGER PRIMARY KEY, split VARCHAR, template VARCHAR, "
                "unseen VARCHAR, question VARCHAR, sql VARCHAR)")
    rows = [(i, split, p.template, p.unseen or None, p.question, p.sql)
            for i, (split, p) in enumerate([("train", p) for p in train] + [("test", p) for p in test], start=1)]
    con.executemany("INSERT INTO sql_pairs VALUES (?, ?, ?, ?, ?, ?)", rows)
    prefix, suffix = dataset.prompt_for("\x00").split("\x00")
    con.execute(f"CREATE OR REPLACE MACRO sql_prompt(question) AS "
                f"{_sql_literal(prefix)} || question || {_sql_literal(suffix)}")
    say(f"\n1. A shop: {len(shop.customers)} customers, {len(shop.products)} products, {len(shop.orders)} orders; "
        f"table sql_pairs holds {len(train)} training and {len(test)} held-out question -> SQL pairs, made by code.")
    say("   Held-out questions use a phrasing, or a value, that their kind of question never shows in training.")
    example = train[0]
    say("   The prompt is the schema and the question (macro sql_prompt); the completion is the SQL:")
    say("\n".join("     | " + line for line in example.prompt.splitlines()))
    say(f"     -> {example.sql}")
    return len(train), len(test)


EVALUATION_QUERY = ("SELECT id, sql_prompt(question) AS prompt, sql AS completion FROM sql_pairs "
                    "WHERE split = 'test' ORDER BY id")


def _evaluate(con: Any, say, models_: list[str], options: dict[str, Any]) -> dict[str, Score]:
    """EVALUATE the models on the held-out pairs (sql_match); the answers go to table sql_predictions."""
    opts = json.dumps({**options, "metrics": ["sql_match"]})
    sql = (f"SELECT finetune('EVALUATE', {_sql_literal(json.dumps(models_))},\n"
           f"    {_sql_literal(EVALUATION_QUERY)},\n    '{opts}')")
    _show_sql(say, sql)
    start = time.perf_counter()
    summary = json.loads(con.execute(sql).fetchall()[0][0])
    seconds = time.perf_counter() - start
    ev = summary["evaluation_id"]
    rows = con.execute("SELECT model, id::INTEGER, prediction, sql_match = 1 FROM finetune_evaluation(?)",
                       [ev]).fetchall()
    con.execute("CREATE TABLE IF NOT EXISTS sql_predictions (model VARCHAR, pair_id INTEGER, answer VARCHAR, "
                "predicted_sql VARCHAR, correct BOOLEAN)")
    for m in models_:
        con.execute("DELETE FROM sql_predictions WHERE model = ?", [m])
    con.executemany("INSERT INTO sql_predictions VALUES (?, ?, ?, ?, ?)",
                    [(m, i, answer, scoring.extract_sql(answer), ok) for m, i, answer, ok in rows])
    scores = {}
    for m in models_:
        marks = [ok for model, _, _, ok in rows if model == m]
        scores[m] = Score(m, sum(marks), len(marks), seconds)
        say(f"   execution accuracy of {m}: {scores[m]}")
    say(f"   ({seconds:.0f} s; rows in FROM finetune_evaluation('{ev}'), answers in table sql_predictions)")
    for c in summary["comparison"]:
        verdict = (f"{c['better']} is better beyond noise" if c["better"] else "not a significant difference")
        say(f"   {c['b']} vs {c['a']}: {c['wins']} questions won, {c['losses']} lost, {c['ties']} tied; "
            f"McNemar p = {c['p_value']:.2g}: {verdict}")
    return scores


def _finetune(con: Any, say, out: TextIO, base_model: str, options: dict[str, Any]) -> tuple[str, str, str]:
    from ..shell.progress import watch

    name = _free_name(con, MODEL_NAME)
    training = "SELECT sql_prompt(question) AS prompt, sql AS completion FROM sql_pairs WHERE split = 'train'"
    validation = "SELECT sql_prompt(question) AS prompt, sql AS completion FROM sql_pairs WHERE split = 'test'"
    sql = (f"SELECT finetune('CREATE', '{name}', {_sql_literal(base_model)},\n"
           f"    {_sql_literal(training)},\n"
           f"    {_sql_literal(validation)},\n"
           f"    '{json.dumps(options)}')")
    _show_sql(say, sql)
    job_id = con.execute(sql).fetchall()[0][0]
    say(f"   -> {job_id}; progress from FROM finetune('DESCRIBE', '{job_id}'):")
    status = watch(con, job_id, out=out)
    return name, job_id, status


def _free_name(con: Any, name: str) -> str:
    """``name``, or ``name_2``, ``name_3``... when a model or job of an earlier run holds it."""
    taken = set()
    for (job_id,) in con.execute("SELECT id FROM finetune('SHOW')").fetchall():
        taken.add(con.execute("SELECT model FROM finetune('DESCRIBE', ?)", [job_id]).fetchall()[0][0])
    candidate, k = name, 1
    while f"main.{candidate}" in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def _examples(con: Any, say, base_model: str, tuned: str, n: int = 3) -> None:
    """A few held-out questions the base model got wrong and the fine-tuned one right."""
    rows = con.execute("""
        SELECT q.question, b.predicted_sql, t.predicted_sql
        FROM sql_pairs q JOIN sql_predictions b ON b.pair_id = q.id AND b.model = ?
                         JOIN sql_predictions t ON t.pair_id = q.id AND t.model = ?
        WHERE t.correct AND NOT b.correct ORDER BY q.id LIMIT ?""", [base_model, tuned, n]).fetchall()
    if not rows:
        return
    say("   Examples (held-out questions):")
    for question, base_sql, tuned_sql in rows:
        say(f"   Q: {question}")
        say(f"      base:  {_one_line(base_sql) or '(no SQL)'}")
        say(f"      tuned: {_one_line(tuned_sql)}")


def _one_line(text: str | None, width: int = 100) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _summary(con: Any, say, path: str, base_model: str, name: str, job_id: str, before: Score, after: Score,
             seconds: float) -> None:
    size = con.execute("SELECT octet_length(adapter) FROM duckdb_ft.models WHERE name = ?", [name]).fetchall()
    say(f"\nResult: execution accuracy on {before.total} held-out questions")
    say(f"   {base_model:<16} {before}")
    say(f"   {name:<16} {after}")
    kinds = con.execute("""
        SELECT q.unseen, count(*), count(*) FILTER (WHERE p.correct)
        FROM sql_pairs q JOIN sql_predictions p ON p.pair_id = q.id AND p.model = ?
        GROUP BY q.unseen ORDER BY q.unseen""", [name]).fetchall()
    say(f"   ({name} on questions with an unseen " + ", on those with an unseen ".join(
        f"{kind}: {right}/{n}" for kind, n, right in kinds) + ")")
    say(f"\nThe model '{name}' lives in {path}: the LoRA adapter "
        f"({size[0][0] / 1e6:.2f} MB) in table duckdb_ft.models, beside its job, metrics and data. Try it:")
    say(f"   duckdb-ft {path}")
    say(f"   SELECT complete('{name}', sql_prompt('How many customers live in Oslo?'));")
    say(f"   FROM finetune_history('{job_id}');")
    say(f"\nDemo finished in {seconds / 60:.1f} min.")
