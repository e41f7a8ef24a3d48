"""COMPLETE / TRY_COMPLETE through SQL on the tiny model: shapes, options, NULLs, errors, batching."""

from __future__ import annotations

import json

import duckdb
import pytest

import duckdb_ft
from conftest import rows as q
from duckdb_ft.ml import complete as completion, models


def test_complete_returns_text(con, tiny_model_path):
    [(text,)] = q(con, "SELECT complete(?, 'hello there', '{\"max_tokens\": 5}')", tiny_model_path)
    body = json.loads(text)
    assert set(body) == {"choices", "created", "model", "usage"}
    assert isinstance(body["choices"][0]["messages"], str)
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 5
    [(plain,)] = q(con, "SELECT complete(?, 'hello there')", tiny_model_path)
    assert isinstance(plain, str)


def test_greedy_is_deterministic_and_options_form_agrees(con, tiny_model_path):
    a = q(con, "SELECT complete(?, 'Say something', '{\"max_tokens\": 8}')", tiny_model_path)[0][0]
    b = q(con, "SELECT complete(?, 'Say something', '{\"max_tokens\": 8, \"temperature\": 0}')", tiny_model_path)[0][0]
    assert json.loads(a)["choices"] == json.loads(b)["choices"]


def test_null_prompt_gives_null_and_empty_prompt_works(con, tiny_model_path):
    rows = q(con, "SELECT complete(?, p, '{\"max_tokens\": 3}') FROM (VALUES (NULL), ('')) t(p)", tiny_model_path)
    assert rows[0][0] is None
    assert json.loads(rows[1][0])["usage"]["prompt_tokens"] > 0


def test_messages_as_list_of_structs_and_as_json_string(con, tiny_model_path):
    structs = q(con, """SELECT complete(?, [{'role': 'system', 'content': 'Be brief.'},
                                           {'role': 'user', 'content': 'Hi'}], '{"max_tokens": 4}')""",
                tiny_model_path)[0][0]
    as_json = q(con, """SELECT complete(?, '[{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Hi"}]', '{"max_tokens": 4}')""",
                tiny_model_path)[0][0]
    assert json.loads(structs)["choices"] == json.loads(as_json)["choices"]
    # Our system message replaces the template's default one, so the prompt is a different length.
    plain = q(con, "SELECT complete(?, 'Hi', '{\"max_tokens\": 4}')", tiny_model_path)[0][0]
    assert json.loads(structs)["usage"]["prompt_tokens"] != json.loads(plain)["usage"]["prompt_tokens"]


@pytest.mark.parametrize("options, message", [
    ('{bad json', "not valid JSON"),
    ('[1, 2]', "must be a JSON object"),
    ('{"temprature": 0.5}', r"unknown COMPLETE option\(s\): temprature; valid options: max_tokens, temperature, top_p"),
    ('{"max_tokens": 0}', "max_tokens must be an integer of at least 1"),
    ('{"max_tokens": "ten"}', "max_tokens must be an integer of at least 1"),
    ('{"temperature": -1}', r"temperature must be in \[0.0, 2.0\]"),
    ('{"top_p": 0}', r"top_p must be in \(0.0, 1.0\]"),
    ('{"max_tokens": 100000}', "exceeds the context of 512 tokens"),
])
def test_bad_options_are_errors_naming_the_problem(con, tiny_model_path, options, message):
    with pytest.raises(duckdb.Error, match=message):
        q(con, "SELECT complete(?, 'hello', ?)", tiny_model_path, options)
    assert q(con, "SELECT try_complete(?, 'hello', ?)", tiny_model_path, options) == [(None,)]


@pytest.mark.parametrize("messages, message", [
    ('[{"role": "robot", "content": "x"}]', "role 'robot'; valid roles: system, user, assistant"),
    ('[{"role": "user"}]', "needs a string 'content'"),
    ('[]', "non-empty array"),
    ('[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]', "last message must be from the user"),
])
def test_bad_messages(con, tiny_model_path, messages, message):
    with pytest.raises(duckdb.Error, match=message):
        q(con, "SELECT complete(?, ?, '{}')", tiny_model_path, messages)


def test_unknown_model_is_an_error_and_try_complete_is_null(con):
    with pytest.raises(duckdb.Error, match="unknown model 'nope'"):
        q(con, "SELECT complete('nope', 'hi')")
    assert q(con, "SELECT try_complete('nope', 'hi'), try_complete('nope', 'hi', '{}')") == [(None, None)]


def test_prompt_longer_than_context(con, tiny_model_path):
    long = "word " * 600
    with pytest.raises(duckdb.Error, match=r"prompt of \d+ tokens plus max_tokens \d+ exceeds the context of 512"):
        q(con, "SELECT complete(?, ?, '{\"max_tokens\": 4}')", tiny_model_path, long)
    rows = q(con, "SELECT try_complete(?, p, '{\"max_tokens\": 4}') FROM (VALUES (?), ('short')) t(p)",
             tiny_model_path, long)
    assert rows[0][0] is None and rows[1][0] is not None  # one bad row does not sink the others


def test_a_chunk_is_generated_in_few_batches(con, tiny_model_path, monkeypatch):
    loaded = models.load(tiny_model_path)
    calls = []
    original = loaded.model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(loaded.model, "generate", counting)
    rows = q(con, "SELECT complete(?, 'Question ' || i || repeat(' x', (i % 7)::INT), '{\"max_tokens\": 2}') "
                  "FROM range(100) t(i)", tiny_model_path)
    assert len(rows) == 100 and all(r[0] is not None for r in rows)
    assert calls == [64, 36]


def test_identical_greedy_rows_are_generated_once_and_answered_alike(con, tiny_model_path, monkeypatch):
    loaded = models.load(tiny_model_path)
    alone = {i: json.loads(q(con, "SELECT complete(?, ?, '{\"max_tokens\": 4}')", tiny_model_path,
                              f"Question {i}")[0][0]) for i in range(7)}
    calls = []
    original = loaded.model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(loaded.model, "generate", counting)
    rows = q(con, "SELECT i % 7, complete(?, 'Question ' || (i % 7), '{\"max_tokens\": 4}') FROM range(100) t(i)",
             tiny_model_path)
    assert calls == [7]  # 100 rows, 7 distinct prompts: one batch of 7
    for k, out in rows:
        got = json.loads(out)
        assert got["choices"] == alone[k]["choices"]
        assert got["usage"] == alone[k]["usage"]  # each row reports the tokens its own answer took
    sampled = q(con, "SELECT complete(?, 'Question 1', '{\"max_tokens\": 4, \"temperature\": 1.0}') "
                     "FROM range(5)", tiny_model_path)
    assert len(sampled) == 5 and calls[1:] == [5]  # sampling: every row draws its own answer


def test_rows_with_different_models_in_one_query(con, tiny_model_path):
    rows = q(con, "SELECT try_complete(m, 'hi') FROM (VALUES (?), ('nope'), (NULL)) t(m)", tiny_model_path)
    assert rows[0][0] is not None and rows[1][0] is None and rows[2][0] is None


def test_install_twice_is_harmless_and_works_on_cursors(tiny_model_path):
    con = duckdb.connect()
    duckdb_ft.install(con)
    duckdb_ft.install(con)
    cur = con.cursor()
    duckdb_ft.install(cur)
    assert q(cur, "SELECT complete(?, 'hi', '{\"max_tokens\": 2}') IS NOT NULL", tiny_model_path) == [(True,)]
    assert q(con, "SELECT complete(?, 'hi', '{\"max_tokens\": 2}') IS NOT NULL", tiny_model_path) == [(True,)]
    con.close()


def test_options_parse_defaults():
    assert completion.CompleteOptions.parse(None) == completion.CompleteOptions()
    assert completion.CompleteOptions.parse('{"max_tokens": 7}').max_tokens == 7


def test_snowflake_cortex_names_work_unchanged(con, tiny_model_path):
    """Cortex scripts call SNOWFLAKE.CORTEX.COMPLETE / TRY_COMPLETE / FINETUNE: the same functions answer."""
    plain = q(con, "SELECT complete(?, 'hi', '{\"max_tokens\": 3}')::JSON->'choices'", tiny_model_path)
    cortex = q(con, "SELECT SNOWFLAKE.CORTEX.COMPLETE(?, 'hi', '{\"max_tokens\": 3}')::JSON->'choices'",
               tiny_model_path)
    assert plain == cortex
    assert q(con, "SELECT SNOWFLAKE.CORTEX.TRY_COMPLETE('nope', 'hi')") == [(None,)]
    assert q(con, "SELECT SNOWFLAKE.CORTEX.FINETUNE('SHOW')") == [("[]",)]
    cur = con.cursor()  # another connection finds its own session through the same macros
    assert q(cur, "SELECT snowflake.cortex.finetune('SHOW')") == [("[]",)]
