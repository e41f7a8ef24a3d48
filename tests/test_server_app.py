"""The server's application in-process (no subprocess, no model loaded: the fast loop's share of
``duckdb-ft serve``): OpenAI's and Snowflake's error shapes for 401, 404, 400, 413, the SQL API as the token's
user, and the queue's 429 and 503."""

from __future__ import annotations

import pytest
from conftest import rows

pytest.importorskip("fastapi")
pytest.importorskip("httpx")  # FastAPI's TestClient

NOT_FOUND = "The model `{}` does not exist or you do not have access to it."


@pytest.fixture(scope="module")
def app():
    """A TestClient of the server's application on an in-memory database; its tokens by user."""
    from fastapi.testclient import TestClient

    import duckdb_ft
    from duckdb_ft.governance.credentials import first_token
    from duckdb_ft.server.app import build
    from duckdb_ft.server.bounds import Queue
    from duckdb_ft.server.context import State
    from duckdb_ft.server.monitoring import Metrics

    con = duckdb_ft.connect()
    for sql in ["CREATE ROLE analyst", "CREATE USER alice PASSWORD = 'alice-secret-1' DEFAULT_ROLE = analyst",
                "GRANT ROLE analyst TO USER alice", "GRANT USAGE ON SCHEMA main TO ROLE analyst",
                "CREATE TABLE pub AS SELECT 'q' || i AS s, i AS x FROM range(3) t(i)",
                "CREATE TABLE secret AS SELECT 1 AS x", "GRANT SELECT ON TABLE pub TO ROLE analyst",
                "CREATE BASE MODEL corp FROM '/nonexistent/folder'"]:
        con.execute(sql).fetchall()
    tokens = {"alice": rows(con, "ALTER USER alice ADD PROGRAMMATIC ACCESS TOKEN t1")[0][1],
              "admin": first_token(con.duckdb_connection.cursor())[0]}
    queue = Queue(4)
    state = State(con=con, queue=queue, metrics=Metrics(con.session.engine, queue), max_prompt_chars=50,
                  max_body_bytes=4000)
    with TestClient(build(state)) as client:
        client.tokens, client.state = tokens, state
        yield client
    con.close()


def auth(app, who):
    return {"Authorization": f"Bearer {app.tokens[who]}"}


def test_missing_or_wrong_token_is_401_in_each_apis_shape(app):
    answer = app.get("/v1/models")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    answer = app.post("/api/v2/statements", json={"statement": "SELECT 1"}, headers={"Authorization": "Bearer x"})
    assert answer.status_code == 401 and set(answer.json()) >= {"code", "message", "sqlState"}


def test_unknown_model_and_registered_model_without_usage_are_the_same_404(app):
    for model in ("corp", "nope", "/tmp"):
        answer = app.post("/v1/chat/completions", headers=auth(app, "alice"),
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 404 and answer.json()["error"]["message"] == NOT_FOUND.format(model)


def test_bad_json_bad_fields_long_prompt_and_big_body_are_refused(app):
    h = auth(app, "admin")
    assert app.post("/v1/completions", content=b"{", headers=h).json()["error"]["code"] == "invalid_json"
    answer = app.post("/v1/completions", json={"model": "x", "prompt": "hi", "logprobs": True}, headers=h)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "logprobs"
    answer = app.post("/v1/completions", json={"model": "x", "prompt": "y" * 51}, headers=h)
    assert answer.status_code == 400 and "limit of 50 characters" in answer.json()["error"]["message"]
    answer = app.post("/v1/completions", json={"model": "x", "prompt": "y" * 5000}, headers=h)
    assert answer.status_code == 413 and "4000 bytes" in answer.json()["error"]["message"]


def test_sql_api_answers_as_the_tokens_user_with_bindings(app):
    answer = app.post("/api/v2/statements", headers=auth(app, "alice"), json={
        "statement": "SELECT s, x FROM pub WHERE x >= ? ORDER BY x", "bindings": {"1": {"type": "FIXED",
                                                                                          "value": "1"}}})
    assert answer.status_code == 200 and answer.json()["data"] == [["q1", "1"], ["q2", "2"]]
    denied = app.post("/api/v2/statements", headers=auth(app, "alice"), json={"statement": "FROM secret"})
    assert denied.status_code == 422 and denied.json()["sqlState"] == "42501"
    assert denied.json()["errorType"] == "PermissionDenied"
    missing = app.post("/api/v2/statements", headers=auth(app, "admin"), json={"statement": "FROM nowhere"})
    assert missing.status_code == 422 and missing.json()["errorType"] == "CatalogException"


def test_queue_full_is_429_and_stopping_is_503():
    from duckdb_ft.server.bounds import Queue, Refused

    queue = Queue(2)
    queue.enter()
    queue.enter()
    with pytest.raises(Refused) as e:
        queue.enter()
    assert e.value.status == 429
    queue.leave()
    assert not queue.drain(0.01) and queue.closing  # one still admitted
    with pytest.raises(Refused) as e:
        queue.enter()
    assert e.value.status == 503


def test_openai_response_format_constrains_the_answer_and_a_bad_one_is_400(app, tiny_model_path):
    """response_format json_schema / json_object: the tiny random model's answer is the schema's JSON (the
    constraint alone makes it so, as AI_COMPLETE's); an unsupported schema is a 400 naming response_format."""
    import json

    app.state.con.execute(f"CREATE OR REPLACE BASE MODEL tiny FROM '{tiny_model_path}'").fetchall()
    schema = {"type": "object", "additionalProperties": False, "required": ["city", "n"],
              "properties": {"city": {"type": "string", "maxLength": 8}, "n": {"type": "integer"}}}
    ask = {"model": "tiny", "messages": [{"role": "user", "content": "A city and a number, as JSON"}],
           "max_tokens": 48}
    answer = app.post("/v1/chat/completions", headers=auth(app, "admin"), json=ask | {"response_format": {
        "type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}}})
    assert answer.status_code == 200, answer.text
    value = json.loads(answer.json()["choices"][0]["message"]["content"])
    assert set(value) == {"city", "n"} and isinstance(value["n"], int) and len(value["city"]) <= 8
    answer = app.post("/v1/chat/completions", headers=auth(app, "admin"),
                      json=ask | {"response_format": {"type": "json_object"}})
    assert answer.status_code == 200, answer.text
    assert isinstance(json.loads(answer.json()["choices"][0]["message"]["content"]), dict)
    for bad in ({"type": "json_schema", "json_schema": {"schema": {"type": "object", "anyOf": []}}},
                {"type": "xml"}):
        answer = app.post("/v1/chat/completions", headers=auth(app, "admin"), json=ask | {"response_format": bad})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "response_format", answer.text
