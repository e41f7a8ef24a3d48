"""The AISQL functions on the tiny random model: AI_CLASSIFY's label is always one of the categories, AI_FILTER a
BOOLEAN usable in WHERE, AI_EXTRACT's response has the fields asked for and validates, AI_SENTIMENT has Snowflake's
shape and labels, whatever the model would say unconstrained; AI_AGG and AI_SUMMARIZE_AGG reduce any number of rows
per group in chunks that fit the window. Bad arguments are errors. """

from __future__ import annotations

import json

import jsonschema
import pytest

from conftest import rows as q
from duckdb_ft.errors import InvalidArgument

TEXTS = "SELECT i, 'Ticket ' || i || ': my card was charged twice' AS t FROM range(9) t(i)"


def test_classify_returns_only_given_labels(con, tiny_model_path):
    rows = q(con, f"""SELECT ai_classify(t, [{{'label': 'billing', 'description': 'payments'}},
                                               {{'label': 'bugs', 'description': 'errors'}}],
                                          {{'model': ?}}) FROM ({TEXTS})""", tiny_model_path)
    for (text,) in rows:
        labels = json.loads(text)["labels"]
        assert len(labels) == 1 and labels[0] in ("billing", "bugs")
    multi = q(con, f"SELECT snowflake.cortex.ai_classify(t, ['a', 'b', 'c'], {{'model': ?, 'output_mode': 'multi'}}) "
                   f"FROM ({TEXTS})", tiny_model_path)
    for (text,) in multi:
        labels = json.loads(text)["labels"]
        assert set(labels) <= {"a", "b", "c"} and len(labels) <= 3


def test_filter_is_a_boolean_in_where(con, tiny_model_path):
    [(n,)] = q(con, f"SELECT count(*) FROM ({TEXTS}) WHERE ai_filter('Is this about money?', t, model => ?)",
               tiny_model_path)
    assert 0 <= n <= 9
    [(value,)] = q(con, "SELECT ai_filter('Is 2 even?', model := ?)", tiny_model_path)
    assert isinstance(value, bool)
    got = {r[0]: r[1] for r in q(con, "SELECT function_name, rows FROM finetune_usage()")}
    assert got["AI_FILTER"] == 10


@pytest.mark.parametrize("categories, config, message", [
    ("[]", "NULL", "non-empty list"),
    ("['a', 'a']", "NULL", "repeat a label"),
    ("['a', 'b']", "{'output_mode': 'many'}", "output_mode must be"),
    ("['a', 'b']", "{'temperature': 1}", "config takes"),
])
def test_classify_bad_arguments(con, tiny_model_path, categories, config, message):
    with pytest.raises(InvalidArgument, match=message):
        q(con, f"SELECT ai_classify('x', {categories}, {config})")


def test_extract_returns_the_fields_asked_for_in_each_form(con, tiny_model_path):
    forms = {"{'name': 'What is the name?', 'city': 'Which city?'}": ["name", "city"],
             "['What is the name?']": ["What is the name?"],
             "[['name', 'What is the name?']]": ["name"]}
    for fmt, keys in forms.items():
        for (text,) in q(con, f"SELECT ai_extract(t, {fmt}, model => ?) FROM ({TEXTS}) LIMIT 2", tiny_model_path):
            out = json.loads(text)
            assert out["error"] is None and list(out["response"]) == keys
            assert all(isinstance(v, str) for v in out["response"].values())
    schema = {"type": "object", "properties": {"age": {"type": "integer"}, "ok": {"type": "boolean"},
                                               "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}}}
    [(text,)] = q(con, "SELECT snowflake.cortex.ai_extract(text => 'Ann, 31', responseFormat => ?::JSON, model => ?)",
                  json.dumps({"schema": schema}), tiny_model_path)
    jsonschema.validate(json.loads(text)["response"], {**schema, "required": ["age", "ok", "tags"]})


@pytest.mark.parametrize("fmt, message", [
    ("[]", "at least one field"), ("{'a': 1}", "must be one of"), ("[['a']]", "must be one of"),
    ("'{\"schema\": {\"type\": \"object\", \"properties\": {\"a\": {\"anyOf\": []}}}}'", "anyOf"),
])
def test_extract_bad_response_format_is_an_error(con, tiny_model_path, fmt, message):
    with pytest.raises(InvalidArgument, match=message):
        q(con, f"SELECT ai_extract('x', {fmt}, model => ?)", tiny_model_path)


def test_sentiment_has_snowflakes_shape_and_labels(con, tiny_model_path):
    rows = q(con, f"SELECT ai_sentiment(t, model => ?), ai_sentiment(t, ['cost', 'speed'], ?) FROM ({TEXTS}) LIMIT 2",
             tiny_model_path, tiny_model_path)
    for plain, aspects in rows:
        [overall] = json.loads(plain)["categories"]
        assert overall["name"] == "overall" and overall["sentiment"] in ("positive", "negative", "neutral", "mixed")
        cats = json.loads(aspects)["categories"]
        assert [c["name"] for c in cats] == ["overall", "cost", "speed"]
        assert all(c["sentiment"] in ("positive", "negative", "neutral", "mixed", "unknown") for c in cats[1:])
    with pytest.raises(InvalidArgument, match="other than 'overall'"):
        q(con, "SELECT ai_sentiment('x', ['overall'], ?)", tiny_model_path)


@pytest.mark.slow
def test_agg_reduces_groups_past_the_window_in_chunks(con, tiny_model_path):
    from duckdb_ft.ml import models

    # group 0: 3 short rows (one prompt); group 1: 60 rows of about 20 tokens, over twice the tiny model's window
    con.execute("CREATE TABLE reviews AS SELECT 0 AS g, 'Fine ' || i AS body FROM range(3) t(i) UNION ALL "
                "SELECT 1, 'Review ' || i || ': the delivery was late and the box was damaged, sadly.' "
                "FROM range(60) t(i)")
    window = models.load(tiny_model_path).context_length
    got = q(con, "SELECT g, ai_agg(body, 'What do customers complain about?', model => ?) FROM reviews "
                 "GROUP BY g ORDER BY g", tiny_model_path)
    assert [g for g, _ in got] == [0, 1] and all(isinstance(a, str) and a for _, a in got)
    [(calls_small,)] = q(con, "SELECT rows FROM finetune_usage() WHERE function_name = 'AI_AGG'")
    one_group = q(con, "SELECT ai_agg(body, 'What do customers complain about?', model => ?) FROM reviews "
                       "WHERE g = 1", tiny_model_path)
    assert len(one_group) == 1
    [(calls,)] = q(con, "SELECT rows FROM finetune_usage() WHERE function_name = 'AI_AGG'")
    big = calls - calls_small  # the model calls for group 1 alone
    assert calls_small == big + 1  # group 0 took one call
    tokens = 60 * 20
    chunks = -(-tokens // window)
    assert chunks + 1 <= big < 2 * 3 * chunks  # chunks, then at least one combine; never one call per row
    [(summary,)] = q(con, "SELECT ai_summarize_agg(body, model => ?) FROM reviews WHERE g = 0", tiny_model_path)
    assert isinstance(summary, str)
    [(n,)] = q(con, "SELECT rows FROM finetune_usage() WHERE function_name = 'AI_SUMMARIZE_AGG'")
    assert n == 1
    assert q(con, "SELECT ai_agg(body, 'x', model => ?) FROM reviews WHERE false", tiny_model_path) == [(None,)]



def test_agg_instruction_too_long_for_the_window_is_a_clear_error(con, tiny_model_path):
    # The tiny model's window is 512 tokens: an instruction of about 420 leaves no room for rows and an answer.
    con.execute("CREATE TABLE notes AS SELECT 'Late delivery ' || i AS body FROM range(5) t(i)")
    with pytest.raises(InvalidArgument) as e:
        con.execute("SELECT ai_agg(body, repeat('Tell me about the complaints. ', 60), model => ?) FROM notes",
                    [tiny_model_path]).fetchall()
    message = str(e.value)
    assert message.startswith("the instruction of AI_AGG takes ") and "of the 512 tokens of model " in message
    assert f"'{tiny_model_path}': too many to leave room for rows; shorten it" in message
    assert q(con, "SELECT count(*) FROM finetune_usage() WHERE function_name = 'AI_AGG'") == [(0,)]  # nothing ran


def test_evaluate_scores_schema_validity_and_label_accuracy(con, tiny_model_path):
    con.execute("CREATE TABLE labelled AS SELECT * FROM (VALUES ('Charged twice', 'billing'), "
                "('App crashes', 'bugs')) t(prompt, completion)")
    opts = {"metrics": ["json_schema_valid", "label_accuracy"], "max_tokens": 4,
            "schema": {"type": "object", "properties": {"labels": {"type": "array"}}, "required": ["labels"]}}
    [(out,)] = q(con, "SELECT finetune('EVALUATE', ?, 'SELECT prompt, completion FROM labelled', ?)",
                 json.dumps([tiny_model_path]), json.dumps(opts))
    scores = json.loads(out)["models"][tiny_model_path]
    assert scores["json_schema_valid"] == 0.0  # four unconstrained tokens of a random model are no such object
    assert 0.0 <= scores["label_accuracy"] <= 1.0
    before = q(con, "SELECT count(*) FROM duckdb_ft.evaluations")
    with pytest.raises(InvalidArgument, match="needs the option schema"):
        q(con, "SELECT finetune('EVALUATE', ?, 'SELECT prompt, completion FROM labelled', ?)",
          json.dumps([tiny_model_path]), json.dumps({"metrics": ["json_schema_valid"]}))
    with pytest.raises(InvalidArgument, match="not a valid JSON Schema"):
        q(con, "SELECT finetune('EVALUATE', ?, 'SELECT prompt, completion FROM labelled', ?)",
          json.dumps([tiny_model_path]), json.dumps({**opts, "schema": {"type": "nope"}}))
    assert q(con, "SELECT count(*) FROM duckdb_ft.evaluations") == before


@pytest.mark.slow
def test_fine_tuned_classifier_recipe_routes_to_given_labels_only(con, tiny_model_path):
    from conftest import FAST, create, wait

    # the README's recipe: train on AI_CLASSIFY's own prompt and answer shape, then classify with the model
    con.execute("CREATE TABLE tickets AS SELECT i AS id, CASE i % 3 WHEN 0 THEN 'I was charged twice for order ' "
                "WHEN 1 THEN 'The app crashes when I open order ' ELSE 'Do you sell gift cards for order ' END || i "
                "AS body, ['billing', 'bugs', 'sales'][i % 3 + 1] AS queue FROM range(24) t(i)")
    con.execute("CREATE TABLE router_training AS SELECT ai_classify_prompt(body, ['billing', 'bugs', 'sales']) "
                "AS prompt, json_object('labels', [queue])::VARCHAR AS completion FROM tickets WHERE id < 18")
    job = create(con, "ticket_router", tiny_model_path, "SELECT prompt, completion FROM router_training",
                 options=FAST)
    assert wait(con, job) == "SUCCESS"
    [(prompt,)] = q(con, "SELECT ai_classify_prompt('Refund please', ['billing', 'bugs'])")
    assert prompt.startswith("Classify the text into one of these categories:\n- billing\n- bugs") \
        and prompt.endswith("Text: Refund please")
    rows = q(con, "SELECT ai_classify(body, ['billing', 'bugs', 'sales'], {'model': 'ticket_router'}) ->> "
                  "'$.labels[0]' FROM tickets WHERE id >= 18")
    assert len(rows) == 6 and all(label in ("billing", "bugs", "sales") for (label,) in rows)
    con.execute("SET duckdb_ft_default_model = ticket_router").fetchall()
    [(n,)] = q(con, "SELECT count(*) FROM tickets WHERE id >= 18 AND "
                    "ai_classify(body, ['billing', 'bugs', 'sales']) ->> '$.labels[0]' = queue")
    assert 0 <= n <= 6
    assert {r[0]: r[1] for r in q(con, "SELECT model_name, sum(rows) FROM finetune_usage() "
                                       "WHERE function_name = 'AI_CLASSIFY' GROUP BY ALL")} == {"main.ticket_router": 12}
