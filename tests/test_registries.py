"""One table per extension point, and its users agree with it: EVALUATE's metrics, COMPLETE's options, the
statements (DuckDB's statement kinds, duckdb-ft's own statements and SHOW forms) and the privileges. Each test
fails when an entry is added to a table but not to what reads it (the stored rows, the columns, the batching key,
the README), or the other way round."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import duckdb
import pytest

import duckdb_ft
from duckdb_ft.catalog import evaluations as evaldb, migrations
from duckdb_ft.evaluation import metrics as M

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _section(title: str) -> str:
    """The README's text under a ``## title`` heading, up to the next ``## `` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


# ---------------------------------------------------------------------------------------------------- metrics


def _dicts(con, sql: str) -> list[dict]:
    cur = con.execute(sql)
    columns = [d[0] for d in cur.description]
    return [dict(zip(columns, r)) for r in cur.fetchall()]


def _old_catalog(path: str, upto: str) -> duckdb.DuckDBPyConnection:
    """A database whose catalog has the migrations before ``upto`` only (as an older duckdb-ft left it)."""
    raw = duckdb.connect(path)
    raw.execute("CREATE SCHEMA duckdb_ft")
    raw.execute("CREATE TABLE duckdb_ft.migrations (name VARCHAR PRIMARY KEY, applied_on BIGINT)")
    for m in migrations.MIGRATIONS:
        if m.__name__ == upto:
            break
        m(raw)
        raw.execute("INSERT INTO duckdb_ft.migrations VALUES (?, 0)", [m.__name__])
    return raw


def test_every_metric_has_a_scorer_and_a_need():
    scoring = M.Scoring(ids=["1", "2"], prompts=["p", "q"], refs=["a b", '{"x": 1}'], preds=["a b", None])
    for m in M.BUILTIN.values():
        assert callable(m.score) and m.needs in (M.TEXTS, M.SANDBOX, M.MODEL), m.name
        assert m.corpus in ("mean", "bleu", "chrf") and m.sql is None, m.name
        if m.needs == M.TEXTS:
            got = m.score(scoring)
            assert len(got) == 2 and all(isinstance(v, (int, float)) for v in got), m.name
    assert M.DEFAULT and set(M.DEFAULT) <= set(M.BUILTIN)


def test_every_metric_is_stored_and_shown_as_a_column_of_finetune_evaluation(tmp_path):
    path = str(tmp_path / "scores.duckdb")
    raw = duckdb.connect(path)
    migrations.migrate(raw)
    scores = {name: float(k) + 0.5 for k, name in enumerate(M.BUILTIN)}
    evaldb.insert(raw, {"id": "ev_all", "owner": "admin", "models": json.dumps(["m"]), "query": "SELECT 1",
                        "options": "{}", "status": "SUCCESS", "progress": 1.0, "rows": 1, "skipped_rows": 0,
                        "created_on": 0})
    evaldb.insert_rows(raw, [{"evaluation_id": "ev_all", "model": "m", "idx": 0, "id": "1", "prompt": "p",
                              "completion": "c", "prediction": "c", "scores": scores,
                              "user_metrics": json.dumps({"short": 1.0}), "prompt_tokens": 1,
                              "completion_tokens": 1, "latency_ms": 1.0}])
    raw.close()
    con = duckdb_ft.connect(path)
    try:
        got = _dicts(con, "FROM finetune_evaluation('ev_all')")
    finally:
        con.close()
    assert len(got) == 1
    assert {name: got[0][name] for name in M.BUILTIN} == scores
    assert got[0]["user_metrics"] == {"short": 1.0}


def test_scores_stored_in_a_column_per_metric_move_into_the_map(tmp_path):
    path = str(tmp_path / "old.duckdb")
    raw = _old_catalog(path, "m014_evaluation_scores")
    raw.execute("INSERT INTO duckdb_ft.evaluations (id, owner, models, query, options, status, created_on) "
                "VALUES ('ev_old', 'admin', '[\"m\"]', 'SELECT 1', '{}', 'SUCCESS', 0)")
    raw.execute("""INSERT INTO duckdb_ft.evaluation_rows (evaluation_id, model, idx, id, prompt, completion,
                   prediction, exact_match, "contains", bleu, completion_loss, user_metrics, prompt_tokens,
                   completion_tokens, latency_ms)
                   VALUES ('ev_old', 'm', 0, '1', 'p', 'c', 'c', 1.0, NULL, 42.5, 0.25, '{"short": 0.0}', 3, 4, 5.0),
                          ('ev_old', 'm', 1, '2', 'q', 'd', 'e', 0.0, NULL, 0.0, 1.5, NULL, 3, 4, 5.0)""")
    raw.close()
    con = duckdb_ft.connect(path)  # migrates
    try:
        stored = con.execute("SELECT idx, scores FROM duckdb_ft.evaluation_rows ORDER BY idx").fetchall()
        got = _dicts(con, "FROM finetune_evaluation('ev_old')")
    finally:
        con.close()
    assert stored == [(0, {"exact_match": 1.0, "bleu": 42.5, "completion_loss": 0.25}),
                      (1, {"exact_match": 0.0, "bleu": 0.0, "completion_loss": 1.5})]
    assert [(r["exact_match"], r["bleu"], r["completion_loss"], r["contains"], r["user_metrics"]) for r in got] == \
        [(1.0, 42.5, 0.25, None, {"short": 0.0}), (0.0, 0.0, 1.5, None, None)]


def test_every_metric_is_documented_in_the_readme_and_only_those():
    section = _section("EVALUATE")
    table = set(re.findall(r"^  \| `([a-z0-9_]+)`(?:, `([a-z0-9_]+)`)? \|", section, re.M))
    documented = {name for row in table for name in row if name}
    assert documented == set(M.BUILTIN), "README's metric table and metrics.BUILTIN differ"
    default = re.search(r"default `([^`]+)`", section.replace("\n  ", " ")).group(1)
    assert default.split(", ") == M.DEFAULT, "README's default metrics and metrics.DEFAULT differ"


# ------------------------------------------------------------------------------------------------ COMPLETE options


def test_every_complete_option_is_in_the_batching_key_or_marked_as_not_in_it():
    from duckdb_ft import options
    from duckdb_ft.ml import complete
    from duckdb_ft.options import CompleteOptions

    fields = dataclasses.fields(CompleteOptions)
    base = CompleteOptions()
    for f in fields:
        assert f.metadata.get("batching") in (options.KEY, options.PER_ROW, options.NONE), f.name
        assert callable(f.metadata.get("check")), f.name
        changed = dataclasses.replace(base, **{f.name: object()}).batch_key() != base.batch_key()
        assert changed == (f.metadata["batching"] == options.KEY), f"{f.name}: batch_key() and its marking differ"
    # PER_ROW options are applied to each row on its own, each in its own way: max_tokens as Request.max_new (in
    # the key), response_format as Request.grammar (each row's logits masked alone)
    assert {f.name for f in fields if f.metadata["batching"] == options.PER_ROW} == {"max_tokens", "response_format"}
    source = __import__("inspect").getsource(complete._generate_unique)
    assert "batch_key()" in source and "r.max_new" in source and "r.grammar" in source, \
        "COMPLETE's batches must key on batch_key()"
    with pytest.raises(duckdb_ft.InvalidArgument) as err:
        CompleteOptions.parse('{"bogus": 1}')
    assert all(f.name in str(err.value) for f in fields)


def test_every_complete_option_is_documented():
    section = _section("COMPLETE")
    from duckdb_ft.options import CompleteOptions

    for f in dataclasses.fields(CompleteOptions):
        assert f"`{f.name}`" in section, f"COMPLETE option {f.name} is not in the README's COMPLETE section"
