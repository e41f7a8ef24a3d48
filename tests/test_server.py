"""``duckdb-ft serve`` as a subprocess on a free localhost port, reached with real clients: the ``openai`` client
(models listed as the role may use them, COMPLETE's greedy answers whole and streamed, 401 and 404 as OpenAI gives
them), Snowflake's SQL API as the token's user, the shell as its client, metrics, the access log and the bounds.
One server for the module, on a copy of the ``apple`` database (fine-tuned model ``exported``) with the tiny base
model registered for role ``analyst`` and user ``alice`` in it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from conftest import APPLE_PROMPTS, COMMAND, Server, allow_base_model, one, rows, wait_for

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow  # a server subprocess (seconds to start); tests/test_server_app.py is the fast loop's

NOT_FOUND = "The model `{}` does not exist or you do not have access to it."
MAX_PROMPT_CHARS = 2000
MAX_BODY_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def served(apple, tiny_model_path, tmp_path_factory):
    """The running server and what the tests need to know of its database: tokens, COMPLETE's own answers."""
    import duckdb_ft
    from duckdb_ft.governance.credentials import first_token

    db_path, _, apple_answers = apple
    db = str(tmp_path_factory.mktemp("served") / "served.duckdb")
    shutil.copyfile(db_path, db)
    con = duckdb_ft.connect(db)
    for sql in ["CREATE ROLE analyst", "CREATE USER alice PASSWORD = 'alice-secret-1' DEFAULT_ROLE = analyst",
                "GRANT ROLE analyst TO USER alice", "GRANT USAGE ON SCHEMA main TO ROLE analyst",
                "CREATE TABLE pub AS SELECT 'q' || i AS s, i AS x FROM range(3) t(i)",
                "CREATE TABLE secret AS SELECT 'salary' AS s, 1000 AS x", "GRANT SELECT ON TABLE pub TO ROLE analyst"]:
        con.execute(sql).fetchall()
    allow_base_model(con, tiny_model_path, role="analyst")
    tokens = {name: rows(con, f"ALTER USER alice ADD PROGRAMMATIC ACCESS TOKEN {name}")[0][1]
              for name in ("app1", "doomed")}
    tokens["admin"] = first_token(con.duckdb_connection.cursor())[0]
    tiny_answer = json.loads(one(con, "SELECT complete('tiny', 'Hello there', '{\"max_tokens\": 8}')"))
    con.close()
    server = Server(db, "--max-prompt-chars", str(MAX_PROMPT_CHARS), "--max-body-bytes", str(MAX_BODY_BYTES))
    server.tokens, server.apple = tokens, apple_answers
    server.tiny = tiny_answer["choices"][0]["messages"]
    yield server
    assert server.stop() == 0, server.log()[-3000:]
    assert "Traceback" not in server.log()


def client(served, who="admin"):
    return openai.OpenAI(base_url=served.url + "/v1", api_key=served.tokens.get(who, who), max_retries=0)


def post(served, path, body, token=None, raw=None):
    """(status, JSON answer) of a POST to the server."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(served.url + path, data=data, method="POST",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def sql(served, statement, who="admin"):
    return post(served, "/api/v2/statements", {"statement": statement}, served.tokens[who])


# ----------------------------------------------------------------------------------------------- the /v1 API


def test_models_lists_only_what_the_role_may_use(served):
    alice = {m.id for m in client(served, "app1").models.list()}
    admin = {m.id for m in client(served).models.list()}
    assert "tiny" in alice and "smollm2-135m" in alice
    assert not {m for m in alice if m.startswith("exported")}  # no USAGE on the fine-tuned model
    assert {"exported", "exported@v1", "tiny"} <= admin


def test_greedy_chat_answer_equals_completes(served):
    answer = client(served).chat.completions.create(
        model="exported", messages=[{"role": "user", "content": APPLE_PROMPTS[0]}], max_tokens=6, temperature=0)
    assert answer.choices[0].message.content == served.apple[0]["choices"][0]["messages"]
    assert answer.usage.completion_tokens == served.apple[0]["usage"]["completion_tokens"]
    assert answer.usage.prompt_tokens == served.apple[0]["usage"]["prompt_tokens"]


def test_concurrent_greedy_requests_share_a_batch_and_each_gets_completes_answer(served):
    from concurrent.futures import ThreadPoolExecutor

    def ask(i):
        return client(served).completions.create(model="exported", prompt=APPLE_PROMPTS[i], max_tokens=6).choices[0]

    with ThreadPoolExecutor(len(APPLE_PROMPTS)) as pool:
        answers = list(pool.map(ask, range(len(APPLE_PROMPTS))))
    assert [a.text for a in answers] == [a["choices"][0]["messages"] for a in served.apple]


def test_sampling_with_a_seed_repeats_its_answer(served):
    def ask():
        return client(served, "app1").completions.create(model="tiny", prompt="Hello there", max_tokens=8,
                                                          temperature=1.0, seed=7).choices[0].text

    assert ask() == ask()


def test_text_completion_of_a_granted_base_model_equals_completes(served):
    answer = client(served, "app1").completions.create(model="tiny", prompt="Hello there", max_tokens=8)
    assert answer.choices[0].text == served.tiny


def test_streamed_chunks_join_to_the_answer_with_usage_last(served):
    stream = client(served).chat.completions.create(
        model="exported", messages=[{"role": "user", "content": APPLE_PROMPTS[1]}], max_tokens=6, temperature=0,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == served.apple[1]["choices"][0]["messages"]
    assert len(pieces) > 1  # sent as it was generated, not whole at the end
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == served.apple[1]["usage"][
        "completion_tokens"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_stop_sequence_cuts_the_answer(served):
    whole = served.apple[0]["choices"][0]["messages"]
    word = whole.split()[1]
    answer = client(served).completions.create(model="exported", prompt=APPLE_PROMPTS[0], max_tokens=6, stop=[word])
    assert answer.choices[0].text == whole[:whole.index(word)] and answer.choices[0].finish_reason == "stop"


def test_bad_token_is_401(served):
    with pytest.raises(openai.AuthenticationError) as e:
        client(served, "dft_0123456789abcdef_notarealsecretatall0").models.list()
    assert e.value.status_code == 401
    status, answer = post(served, "/v1/chat/completions", {"model": "tiny"})
    assert status == 401 and answer["error"]["code"] == "invalid_api_key"


def test_unknown_model_and_model_without_usage_get_the_same_404(served):
    alice = client(served, "app1")
    for model in ("no_such_model", "exported", "exported@v1", "/etc"):
        with pytest.raises(openai.NotFoundError) as e:
            alice.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert e.value.body["message"] == NOT_FOUND.format(model)
        assert e.value.body["code"] == "model_not_found"


def test_bad_requests_are_400_with_what_was_wrong(served):
    token = served.tokens["admin"]
    status, answer = post(served, "/v1/chat/completions", None, token, raw=b'{"model": "tiny", ')
    assert status == 400 and "not valid JSON" in answer["error"]["message"]
    status, answer = post(served, "/v1/chat/completions", {"model": "tiny", "messages": [], "n": 1}, token)
    assert status == 400 and answer["error"]["param"] == "messages"
    status, answer = post(served, "/v1/completions", {"model": "tiny", "prompt": "x", "n": 2}, token)
    assert status == 400 and "'n' must be 1" in answer["error"]["message"]
    status, answer = post(served, "/v1/completions", {"model": "tiny", "prompt": "x", "temperature": -1}, token)
    assert status == 400 and "temperature" in answer["error"]["message"]


def test_prompt_over_the_limit_is_400_naming_it(served):
    status, answer = post(served, "/v1/completions", {"model": "tiny", "prompt": "x" * (MAX_PROMPT_CHARS + 1)},
                          served.tokens["admin"])
    assert status == 400 and f"limit of {MAX_PROMPT_CHARS} characters" in answer["error"]["message"]


def test_body_over_the_limit_is_413(served):
    status, answer = post(served, "/v1/completions", {"model": "tiny", "prompt": "x" * MAX_BODY_BYTES},
                          served.tokens["admin"])
    assert status == 413 and str(MAX_BODY_BYTES) in answer["error"]["message"]


def test_client_leaving_mid_stream_frees_its_place_and_the_server_stays(served):
    host, port = served.url.removeprefix("http://").split(":")
    body = json.dumps({"model": "tiny", "prompt": "Tell me a story", "max_tokens": 40, "stream": True}).encode()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Authorization: Bearer {served.tokens['admin']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                  + body)
    # gone before the answer: the server answers others and its queue empties
    answer = client(served, "app1").completions.create(model="tiny", prompt="Hello there", max_tokens=8)
    assert answer.choices[0].text == served.tiny

    def depth():
        text = urllib.request.urlopen(urllib.request.Request(
            served.url + "/metrics", headers={"Authorization": f"Bearer {served.tokens['admin']}"})).read().decode()
        return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("duckdb_ft_queue_depth"))

    wait_for(lambda: depth() == 0, timeout=60, what="the queue to empty")


# ------------------------------------------------------------------------------------------------ SQL over HTTP


def test_sql_api_runs_as_the_tokens_user(served):
    status, answer = sql(served, "SELECT s, x FROM pub ORDER BY x", "app1")
    assert status == 200 and answer["data"] == [["q0", "0"], ["q1", "1"], ["q2", "2"]]
    assert [(c["name"], c["type"]) for c in answer["resultSetMetaData"]["rowType"]] == [("s", "VARCHAR"),
                                                                                         ("x", "BIGINT")]
    assert answer["sqlState"] == "00000"
    status, answer = sql(served, "SELECT * FROM secret", "app1")
    assert status == 422 and answer["sqlState"] == "42501"
    assert "Insufficient privileges to operate on table 'main.secret'" in answer["message"]
    status, answer = sql(served, "SELECT * FROM secret")
    assert status == 200 and answer["data"] == [["salary", "1000"]]


def test_completions_are_in_the_usage_history_under_the_users_role(served):
    client(served, "app1").completions.create(model="tiny", prompt="Hello there", max_tokens=8)
    status, answer = sql(served, "SELECT function_name, model_name, role FROM finetune_usage() "
                                 "WHERE role = 'analyst'", "app1")
    assert status == 200 and ["COMPLETE", "tiny", "analyst"] in answer["data"]


def test_removed_token_is_refused_at_the_next_request(served):
    assert client(served, "doomed").models.list().data
    status, _ = sql(served, "ALTER USER alice REMOVE PROGRAMMATIC ACCESS TOKEN doomed")
    assert status == 200
    with pytest.raises(openai.AuthenticationError):
        client(served, "doomed").models.list()
    assert sql(served, "SELECT 1", "doomed")[0] == 401


def test_shell_as_a_client_renders_and_refuses_as_locally(served):
    env = {**os.environ, "DUCKDB_FT_TOKEN": served.tokens["app1"]}
    run = subprocess.run([*COMMAND, "--server", served.url], input="SELECT s, x FROM pub ORDER BY x;\n.mode csv\n"
                         "SELECT x FROM pub WHERE x = 1;\nSELECT * FROM secret;\n", capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode == 1  # the script's last statement failed
    assert "│ q2      │     2 │" in run.stdout and "x\n1\n" in run.stdout
    assert run.stderr.strip() == ("Error: Insufficient privileges to operate on table 'main.secret': SELECT is "
                                  "required (current role: analyst)")


# --------------------------------------------------------------------------------------------- monitoring


def test_metrics_count_requests_and_tokens_for_the_administrator_only(served):
    client(served).completions.create(model="exported", prompt=APPLE_PROMPTS[2], max_tokens=6)

    def get(token):
        try:
            with urllib.request.urlopen(urllib.request.Request(
                    served.url + "/metrics", headers={"Authorization": f"Bearer {token}"})) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    status, text = get(served.tokens["admin"])
    assert status == 200
    assert 'duckdb_ft_requests_total{endpoint="/v1/completions",model="exported",status="200"}' in text
    assert 'duckdb_ft_completion_tokens_total{model="exported"}' in text
    assert "duckdb_ft_time_to_first_token_seconds_bucket" in text and 'duckdb_ft_jobs{status="SUCCESS"} 1.0' in text
    assert get(served.tokens["app1"])[0] == 403


def test_access_log_is_json_lines_without_prompts_or_tokens(served):
    client(served, "app1").completions.create(model="tiny", prompt="a very private prompt", max_tokens=4)
    lines = [json.loads(line) for line in served.log().splitlines() if line.startswith("{")]
    assert {"method", "path", "status", "ms", "user"} <= set(lines[-1])
    assert any(line["user"] == "alice" and line["path"] == "/v1/completions" for line in lines)
    log = served.log()
    assert "very private" not in log and not any(t in log for t in served.tokens.values())


# ---------------------------------------------------------------------------------------------- the README


@pytest.mark.slow
@pytest.mark.real_model
def test_readme_serving_walkthrough_gets_a_first_answer(tmp_path, default_model_path):
    """The README's "Serving" section, run as written (on a free port instead of 8000): its token and serve commands,
    then its Python snippet with the openai client."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Serving"):]
    shell = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    commands = [line.split("  #")[0].strip() for line in shell.splitlines() if line.strip()]
    assert commands[0] == "duckdb-ft token shop.duckdb > admin.token"
    assert commands[1] == "duckdb-ft serve shop.duckdb"
    subprocess.run(f"{' '.join(COMMAND)} token shop.duckdb > admin.token", shell=True, cwd=tmp_path, check=True,
                   timeout=120)
    server = Server(str(tmp_path / "shop.duckdb"))
    try:
        code = snippet.replace("http://127.0.0.1:8000", server.url).replace('open("admin.token")',
                                                                           f'open({str(tmp_path / "admin.token")!r})')
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "Paris" in run.stdout
    finally:
        assert server.stop() == 0
