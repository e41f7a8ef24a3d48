"""Shared fixtures (a temporary model cache, the real default model, a tiny two-layer Llama and its tokenized
``PAIRS``, an in-memory database, the ``faq`` and ``big`` tables) and the helpers test files share (``rows``,
``one``, ``create``, ``describe``, ``wait``, ``wait_for``, ``catalog_counts``, ``python_output``, ``peft_model``,
``lora_grads``, ``setup_attack_db``, ``user_connection``, ``denied``, ``refused``, ``allow_base_model``; the ``limited`` fixture; the options ``FAST``,
``ONE_EPOCH`` and ``LEARN``; ``COMMAND``, the duckdb-ft command line, and ``run_sql_script``, a walk-through of sql/
through it (the ``sql_script_run`` fixture: each once a run); the privilege matrix ``PRIVILEGE_MATRIX``, whose
database is the ``privilege_shop`` fixture): ``from conftest import ...``. Test modules
import nothing from each other. Set-ups that train (``apple``, ``privilege_shop``) and the tiny model are made once
a run, shared by the pytest-xdist workers (``once_a_run``), and never changed; a test that changes a trained
database works on a copy of its file.

Tests marked ``slow`` (torchrun, kill loops, the notebook, the shell and scripts as subprocesses and in a terminal,
the real model, jobs trained to their end, fuzzing) are left out by ``make test-fast``; ``make test`` runs them all.

The tiny model has random weights but the real SmolLM2 tokenizer and chat template, so every code path
(chat templating, padding, masking, LoRA) is the real one; it trains and generates in milliseconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

# Every user path points at a temporary folder: the converted default model too (converted once per run).
_CACHE = Path(os.environ.get("DUCKDB_FT_TEST_CACHE") or Path(__file__).resolve().parent.parent / ".pytest_cache" / "model-cache")
os.environ["DUCKDB_FT_CACHE"] = str(_CACHE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (make test) the workers share the cores: each worker's torch (and the processes its tests
# start) takes its share of threads, not every core, so that the workers do not oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

#: A short job on the tiny model.
FAST = {"max_epochs": 2, "batch_size": 4}

#: One epoch in batches of 8, as finetune('CREATE', ...)'s options argument (JSON text).
ONE_EPOCH = json.dumps({"max_epochs": 1, "batch_size": 8})

#: A job that learns: on the tiny model the loss falls far and the answers become the trained completions.
LEARN = {"max_epochs": 6, "batch_size": 4, "learning_rate": 0.02, "lora_r": 16, "lora_alpha": 32,
         "lora_dropout": 0.0, "warmup_ratio": 0.0}

#: The duckdb-ft command line: the console script next to this interpreter, else ``python -m duckdb_ft``.
_EXE = Path(sys.executable).with_name("duckdb-ft")
COMMAND = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "duckdb_ft"]

#: Chat pairs of uneven lengths, for the training-step tests (the ``tiny`` fixture tokenizes them).
PAIRS = [
    ("What is the capital of France?", "Paris."),
    ("Write a SQL query counting the rows of table orders.", "SELECT count(*) FROM orders;"),
    ("Summarize: the parcel arrived late and the box was crushed, so the customer wants a refund.",
     "A late, damaged parcel; the customer asks for a refund."),
    ("Hi", "Hello! How can I help you today? Ask me anything about your order, and I will look it up."),
    ("Translate 'good morning' to Spanish.", "Buenos días."),
    ("List three primary colours.", "Red, yellow and blue."),
]

#: The prompts whose greedy answers (6 tokens) the ``apple`` fixture records.
APPLE_PROMPTS = ["Say the word 3", "Say the word 11", "What is 2 + 2?"]

#: The catalog tables a job writes.
JOB_TABLES = ("jobs", "job_rows", "metrics", "models", "checkpoints")


def python_output(code, unset=(), **env):
    """What ``python -c code`` prints (stripped), in a fresh interpreter whose environment is this one's without the
    variables ``unset`` and with ``env`` added: for what happens at import time, before torch loads."""
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k not in unset} | env
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True,
                          check=True).stdout.strip()


def rows(con, sql, *params):
    """Every row of a query (fully fetched: DuckDB 2 keeps a connection busy after a partial fetch)."""
    return con.execute(sql, list(params)).fetchall()


def one(con, sql, *params):
    """The single value of a one-row, one-column query."""
    return rows(con, sql, *params)[0][0]


def create(con, name, base, query, validation=None, options=None):
    """finetune('CREATE', ...) with options as a dict; the job id."""
    return one(con, "SELECT finetune('CREATE', ?, ?, ?, ?, ?)", name, base, query, validation,
               json.dumps(options) if options is not None else None)


def describe(con, job_id):
    return json.loads(one(con, "SELECT finetune('DESCRIBE', ?)", job_id))


def wait(con, job_id, timeout=300):
    return one(con, "SELECT finetune('WAIT', ?, ?)", job_id, timeout)


def catalog_counts(con, tables=JOB_TABLES):
    """Rows in each of ``tables`` of the duckdb-ft catalog (by default those a job writes)."""
    return {t: one(con, f"SELECT count(*) FROM duckdb_ft.{t}") for t in tables}


def wait_for(predicate, timeout=120, what="condition", interval=0.05):
    """Poll ``predicate`` until it returns something true (returned), or fail after ``timeout`` seconds: a wait
    for an event, whose bound only a broken program reaches (not a measure of speed)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def once_a_run(tmp_path_factory, name, make):
    """``make(folder)``'s value (JSON: a path, ids, answers), made once a test run: under pytest-xdist the first
    worker to ask makes it in a folder of the run's own (beside the workers' ``tmp_path``s) while the others wait
    on a file lock, then read what it wrote, so that a set-up that trains runs once, not once a worker. Without
    xdist: once a session, in a ``tmp_path_factory`` folder. A worker whose ``make`` fails leaves nothing: the
    next one tries again (and fails alike)."""
    import tempfile

    from filelock import FileLock  # torch's own dependency

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent  # the run's folder: each worker's basetemp is in it
    made = root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not made.is_file():
            value = make(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root)))
            made.write_text(json.dumps(value))
        return json.loads(made.read_text())


def peft_model(path, dropout=0.0, attention=None):
    """The model at ``path`` with a rank-4 LoRA adapter whose B matrices are random (so the adapter matters)."""
    import torch
    from peft import get_peft_model

    from duckdb_ft.ml import models, training
    from duckdb_ft.options import TrainingOptions

    base = models.load_for_training(path, attention)
    torch.manual_seed(0)
    model = get_peft_model(base, training.lora_config(base, TrainingOptions(lora_dropout=dropout, lora_r=4)))
    for name, p in model.named_parameters():  # LoRA B starts at zero: give it weights, so the adapter matters
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    return model


def lora_grads(model):
    """The gradients of a model's trainable (LoRA) parameters, by name."""
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def denied(con, sql, *params, match="Insufficient privileges"):
    """``sql`` run on ``con`` is refused with PermissionDenied, its message matching ``match``."""
    from duckdb_ft.errors import PermissionDenied

    with pytest.raises(PermissionDenied, match=match):
        con.execute(sql, list(params)).fetchall()


def refused(con, limit, sql, *params):
    """``sql`` run on ``con`` is refused by the role limit ``limit``, which the error names."""
    denied(con, sql, *params, match=f"role limit {limit} is")


def user_connection(admin, user: str):
    """A user session on the administrator's database (an in-memory one: the same instance)."""
    from duckdb_ft.surface.connection import Connection
    from duckdb_ft.surface.functions import install

    raw = admin.duckdb_connection.cursor()
    return Connection(raw, install(raw, user=user))


def setup_attack_db(admin) -> None:
    """The attacks' database: user u1 in role attacker, with USAGE on ``main``, SELECT on ``pub``, INSERT on
    ``logt``, CREATE MODEL on ``ml`` and CREATE TABLE/VIEW on ``main``; ``secret`` and the attached ``hr`` not
    granted."""
    for sql in [
        "CREATE TABLE pub AS SELECT 'q' || i AS s, i AS x FROM range(5) t(i)",
        "CREATE TABLE secret AS SELECT 'salary ' || i AS s, 1000 * i AS x FROM range(5) t(i)",
        "CREATE TABLE logt (s VARCHAR, x BIGINT)",
        "INSERT INTO logt VALUES ('private log line', 7)",
        "CREATE VIEW v_pub AS SELECT * FROM pub",
        "CREATE VIEW v_sec AS SELECT * FROM secret",
        "CREATE SCHEMA ml",
        "ATTACH ':memory:' AS hr",
        "CREATE TABLE hr.main.salaries AS SELECT 'ceo' AS s, 999999 AS x",
        "CREATE TABLE hr.main.pub AS SELECT 'hr row' AS s, 1 AS x",
    ]:
        admin.execute(sql)
    for sql in [
        "CREATE ROLE attacker", "GRANT ROLE attacker TO USER u1",
        "GRANT USAGE ON SCHEMA main TO ROLE attacker", "GRANT USAGE ON SCHEMA ml TO ROLE attacker",
        "GRANT SELECT ON TABLE pub TO ROLE attacker", "GRANT SELECT ON VIEW v_pub TO ROLE attacker",
        "GRANT INSERT ON TABLE logt TO ROLE attacker", "GRANT CREATE MODEL ON SCHEMA ml TO ROLE attacker",
        "GRANT CREATE TABLE, CREATE VIEW ON SCHEMA main TO ROLE attacker",
    ]:
        admin.execute(sql).fetchall()


def allow_base_model(admin, path, role="public"):
    """Register the folder ``path`` as a base model and grant it to ``role``: a user session may then name it (by
    its name, ``tiny``, or by the folder as registered)."""
    admin.execute(f"CREATE OR REPLACE BASE MODEL tiny FROM '{path}'").fetchall()
    admin.execute(f"GRANT USAGE ON BASE MODEL tiny TO ROLE {role}").fetchall()


#: The privilege matrix's training query, over the table every role of ``privilege_shop`` but outsider may read.
PRIVILEGE_QUERY = "SELECT q AS prompt, a AS completion FROM main.faq"

#: The privilege matrix's users, in the order of each case's ``allowed``: alice (role analyst), bob (viewer), eve
#: (outsider).
PRIVILEGE_USERS = ("alice", "bob", "eve")

#: The privilege matrix, replayed in-process (tests/test_privileges.py) and over the PostgreSQL wire
#: (tests/test_pgwire.py) on copies of ``privilege_shop``. Each case: (action, SQL, whether alice / bob / eve may do it, the
#: message a denial carries, the administrator's statement that undoes an allowed case or None). In the SQL, {u}
#: is the user, {base} the tiny model's folder, {opts} ``ONE_EPOCH``.
PRIVILEGE_MATRIX = [
    ("finetune from a granted table",
     f"SELECT finetune('CREATE', 'ml.m_{{u}}', '{{base}}', '{PRIVILEGE_QUERY}', NULL, '{{opts}}')",
     (True, False, False), "CREATE MODEL is required|USAGE is required", None),
    ("finetune into a schema without CREATE MODEL",
     f"SELECT finetune('CREATE', 'main.m_{{u}}', '{{base}}', '{PRIVILEGE_QUERY}', NULL, '{{opts}}')",
     (False, False, False), "operate on schema 'main'", None),
    ("finetune from a forbidden table",
     "SELECT finetune('CREATE', 'ml.x_{u}', '{base}', 'SELECT q AS prompt, a AS completion FROM secret')",
     (False, False, False), "operate on table 'main.secret'|schema 'ml'", None),
    ("finetune through a view over a forbidden table",
     "SELECT finetune('CREATE', 'ml.x_{u}', '{base}', 'SELECT q AS prompt, a AS completion FROM secret_view')",
     (False, False, False), "'main.secret'|schema 'ml'", None),
    ("finetune with a CTE hiding a forbidden table",
     "SELECT finetune('CREATE', 'ml.x_{u}', '{base}', 'WITH s AS (SELECT * FROM secret) "
     "SELECT q AS prompt, a AS completion FROM s')", (False, False, False), "'main.secret'|schema 'ml'", None),
    ("finetune with a subquery hiding a forbidden table",
     "SELECT finetune('CREATE', 'ml.x_{u}', '{base}', 'SELECT q AS prompt, a AS completion FROM faq "
     "WHERE q IN (SELECT q FROM secret)')", (False, False, False), "'main.secret'|schema 'ml'", None),
    ("finetune with a UNION hiding a forbidden table",
     "SELECT finetune('CREATE', 'ml.x_{u}', '{base}', 'SELECT q AS prompt, a AS completion FROM faq "
     "UNION ALL SELECT q, a FROM secret')", (False, False, False), "'main.secret'|schema 'ml'", None),
    ("finetune from a file", "SELECT finetune('CREATE', 'ml.x_{u}', '{base}', "
     "'SELECT q AS prompt, a AS completion FROM read_csv(''/etc/hosts'')')", (False, False, False),
     "administrator only|CREATE MODEL|schema 'ml'", None),
    ("complete with a model", "SELECT complete('ml.shared_bot', 'hi', '{{\"max_tokens\": 2}}') IS NOT NULL",
     (True, True, False), "operate on (model 'ml.shared_bot'|schema 'ml')", None),
    ("describe a model", "DESCRIBE MODEL ml.shared_bot", (True, True, False), "USAGE is required", None),
    ("select a granted table", "SELECT count(*) FROM faq", (True, False, False), "operate on (table|schema)", None),
    ("select a forbidden table", "SELECT count(*) FROM secret", (False, False, False), "operate on (table|schema)",
     None),
    ("select a view over a forbidden table", "SELECT count(*) FROM secret_view", (False, False, False),
     "'main.secret'|schema 'main'", None),
    ("copy a forbidden table into a new one", "CREATE TABLE ml.copy_{u} AS SELECT * FROM secret",
     (False, False, False), "operate on", None),
    ("insert into a table without INSERT", "INSERT INTO faq VALUES ('x', 'y')", (False, False, False),
     "INSERT is required|schema 'main'", None),
    ("delete from a table", "DELETE FROM secret", (False, False, False), "operate on", None),
    ("read a file", "SELECT * FROM read_csv('/etc/hosts')", (False, False, False), "administrator only", None),
    ("write the catalog", "DELETE FROM duckdb_ft.models", (False, False, False), "duckdb_ft", None),
    ("read the catalog", "SELECT * FROM duckdb_ft.grants", (False, False, False), "duckdb_ft", None),
    ("change configuration", "SET threads = 1", (False, False, False), "administrator only", None),
    ("attach another database", "ATTACH ':memory:' AS other", (False, False, False), "administrator only", None),
    ("export data", "COPY faq TO '/tmp/faq.csv'", (False, False, False), "administrator only", None),
    ("create a role", "CREATE ROLE r_{u}", (False, False, False), "administrator only", None),
    ("grant a role", "GRANT ROLE analyst TO USER {u}2", (False, False, False), "administrator only", None),
    ("grant usage on an owned model", "GRANT USAGE ON MODEL ml.shared_bot TO ROLE outsider",
     (True, False, False), "OWNERSHIP", "REVOKE USAGE ON MODEL ml.shared_bot FROM ROLE outsider"),
    ("use a role not granted", "USE ROLE analyst", (True, False, False), "not granted to user", None),
]


@pytest.fixture(scope="session")
def privilege_shop(tmp_path_factory, tiny_model_path):
    """The privilege matrix's database file and the job id of its model: tables faq and secret, views over each,
    schema ml, roles analyst (alice; USAGE on main and ml, CREATE MODEL on ml, SELECT on faq, faq_view and
    secret_view), viewer (bob; USAGE on ml and on model ml.shared_bot), outsider (eve) and senior (carol; granted
    analyst), the model ml.shared_bot trained from the tiny model and owned by analyst, the tiny model a base model
    every role may name. Built once a run (shared by the pytest-xdist workers) and never changed: a test works on
    a copy of the file."""
    return tuple(once_a_run(tmp_path_factory, "priv", lambda folder: _build_privilege_shop(folder, tiny_model_path)))


def _build_privilege_shop(folder, tiny_model_path):
    import duckdb_ft

    path = str(folder / "shop.duckdb")
    base = tiny_model_path
    admin = duckdb_ft.connect(path)
    admin.execute("CREATE TABLE faq AS SELECT 'question ' || i AS q, 'answer ' || i AS a FROM range(20) t(i)")
    admin.execute("CREATE TABLE secret AS SELECT 'salary of ' || i AS q, (1000 * i)::VARCHAR AS a FROM range(20) t(i)")
    admin.execute("CREATE VIEW secret_view AS SELECT * FROM secret")
    admin.execute("CREATE VIEW faq_view AS SELECT * FROM faq")
    admin.execute("CREATE SCHEMA ml")
    for stmt in [
        "CREATE ROLE analyst", "CREATE ROLE viewer", "CREATE ROLE outsider", "CREATE ROLE senior",
        "GRANT USAGE ON SCHEMA main TO ROLE analyst", "GRANT USAGE ON SCHEMA ml TO ROLE analyst",
        "GRANT CREATE MODEL ON SCHEMA ml TO ROLE analyst", "GRANT SELECT ON TABLE faq TO ROLE analyst",
        "GRANT SELECT ON VIEW faq_view TO ROLE analyst", "GRANT SELECT ON VIEW secret_view TO ROLE analyst",
        "GRANT USAGE ON SCHEMA ml TO ROLE viewer",
        "GRANT ROLE analyst TO USER alice", "GRANT ROLE viewer TO USER bob", "GRANT ROLE outsider TO USER eve",
        "GRANT ROLE analyst TO ROLE senior", "GRANT ROLE senior TO USER carol",
    ]:
        admin.execute(stmt).fetchall()
    job = admin.execute("SELECT finetune('CREATE', 'ml.shared_bot', ?, ?, NULL, ?)",
                        [base, PRIVILEGE_QUERY, ONE_EPOCH]).fetchall()[0][0]
    assert duckdb_ft.wait(admin, job) == "SUCCESS"
    admin.execute("GRANT OWNERSHIP ON MODEL ml.shared_bot TO ROLE analyst").fetchall()
    admin.execute("GRANT USAGE ON MODEL ml.shared_bot TO ROLE viewer").fetchall()
    allow_base_model(admin, base)  # the folder is a base model every role may name
    admin.close()
    return path, job


def run_sql_script(path: Path, database: Path, model: str):
    """The walk-through ``path`` (in sql/) through the shell's script mode (``duckdb-ft DATABASE < script``) on the
    model folder ``model`` instead of the default model: its CompletedProcess."""
    import subprocess

    script = path.read_text().replace("'smollm2-135m'", f"'{model}'")
    if path.name == "privileges.sql":  # its users name the model: a folder only as a registered base model
        script = f"CREATE BASE MODEL tiny FROM '{model}';\nGRANT USAGE ON BASE MODEL tiny TO ROLE public;\n" \
            + script.replace(f"'{model}'", "'tiny'")
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
    return subprocess.run([*COMMAND, str(database)], input=script, capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture(scope="session")
def sql_script_run(tmp_path_factory, tiny_model_path):
    """A function of a script's name in sql/ giving its run on the tiny model (``run_sql_script``) as a dict:
    returncode, stdout, stderr and the database file it ran on (never changed after: open it read-only). Each
    script runs once a run, whichever test (or pytest-xdist worker) asks first."""
    runs = {}
    folder = Path(__file__).resolve().parent.parent / "sql"

    def make(name, into):
        done = run_sql_script(folder / name, into / "script.duckdb", tiny_model_path)
        return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
                "database": str(into / "script.duckdb")}

    def run(name: str) -> dict:
        if name not in runs:
            runs[name] = once_a_run(tmp_path_factory, f"script-{name}", lambda into: make(name, into))
        return runs[name]

    return run


@pytest.fixture(scope="session")
def default_model_path() -> str:
    """The real SmolLM2-135M-Instruct, converted into the test cache (about 20 s the first time: under pytest-xdist
    one worker converts while the others wait for it, rather than each converting its own copy)."""
    from filelock import FileLock

    from duckdb_ft.ml import models

    _CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(_CACHE / ".convert.lock")):
        return models.resolve(models.DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_model_path(default_model_path, tmp_path_factory) -> str:
    """A two-layer Llama (hidden 64) with SmolLM2's tokenizer, saved as a Hugging Face folder (once a run: the
    trained set-ups below name it as their base model)."""
    return once_a_run(tmp_path_factory, "tiny-llama", lambda path: _save_tiny_model(path, default_model_path))


def _save_tiny_model(path, default_model_path) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(default_model_path)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        # A wide init: with the default 0.02 the frozen tied embeddings cap every logit near 1, so no LoRA could
        # move the loss far from ln(vocab) and fine-tuning tests could not tell learning from noise.
        initializer_range=0.3,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny(tiny_model_path):
    """The tiny model's path, its tokenizer and ``PAIRS`` tokenized (read only)."""
    from duckdb_ft.ml import data, models

    tokenizer = models.load_tokenizer(tiny_model_path)
    return tiny_model_path, tokenizer, data.tokenize_pairs(tokenizer, PAIRS, 128)


@pytest.fixture(scope="session")
def apple(tmp_path_factory, tiny_model_path):
    """A database file with model 'exported', trained (``LEARN``) to answer 'apple apple apple' to 'Say the word
    <i>': its path, its job id, and COMPLETE's answers (parsed JSON) to ``APPLE_PROMPTS``, taken before the file was
    closed. Trained once a run, for every test that needs a model that learned something; never changed: a test
    that changes it, or writes beside it, or opens it in another process, takes a copy (``apple_copy``): under
    pytest-xdist the workers share the file."""
    return tuple(once_a_run(tmp_path_factory, "apple", lambda folder: _train_apple(folder, tiny_model_path)))


def _train_apple(folder, tiny_model_path):
    import duckdb_ft

    db = str(folder / "apple.duckdb")
    con = duckdb_ft.connect(db)
    con.execute("CREATE TABLE t AS SELECT 'Say the word ' || i AS p, 'apple apple apple' AS c FROM range(16) t(i)")
    job = create(con, "exported", tiny_model_path, "SELECT p AS prompt, c AS completion FROM t", options=LEARN)
    assert wait(con, job) == "SUCCESS"
    answers = [json.loads(one(con, "SELECT complete('exported', ?, '{\"max_tokens\": 6, \"temperature\": 0}')", p))
               for p in APPLE_PROMPTS]
    con.close()  # a command line may open the file: DuckDB lets one process at a time write it
    return db, job, answers


@pytest.fixture
def apple_copy(apple, tmp_path_factory):
    """A copy of ``apple``'s database file for one test (in a folder of its own, not the test's ``tmp_path``): its
    path, the job id and the answers."""
    import shutil

    db, job, answers = apple
    copy = tmp_path_factory.mktemp("apple_copy") / "apple.duckdb"
    shutil.copyfile(db, copy)
    return str(copy), job, answers


@pytest.fixture
def limited():
    """The attack database's administrator and user ``u1`` (role ``attacker``), for the role-limit tests."""
    import duckdb_ft

    admin = duckdb_ft.connect()
    setup_attack_db(admin)
    u1 = user_connection(admin, "u1")
    yield admin, u1
    u1.close()
    admin.close()


@pytest.fixture
def con():
    """An in-memory database with duckdb-ft installed."""
    import duckdb_ft

    c = duckdb_ft.connect()
    yield c
    c.close()


@pytest.fixture
def faq(con):
    """``con`` with table faq: 24 question/answer pairs (and a number column n)."""
    con.execute("CREATE TABLE faq AS SELECT 'What is code number ' || i || '?' AS question, "
                "'The code is ' || (i * 7) || '.' AS answer, i AS n FROM range(24) t(i)")
    return con


@pytest.fixture
def big(con):
    """``con`` with table big: 200 prompt/completion pairs (columns p, c), for jobs that run long."""
    con.execute("CREATE TABLE big AS SELECT 'prompt ' || i AS p, 'completion ' || i AS c FROM range(200) t(i)")
    return con


class Server:
    """A ``duckdb-ft serve`` subprocess of database file ``db`` on a free localhost port: its ``url``, ``process``
    and the file beside ``db`` its standard error goes to (``log()`` reads it)."""

    def __init__(self, db: str, *options: str):
        import socket
        import subprocess
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.stderr = open(f"{db}.serve-{port}.log", "w+")  # beside the database, in the test's own folder
        self.process = subprocess.Popen([*COMMAND, "serve", db, "--port", str(port), *options],
                                        stdout=subprocess.DEVNULL, stderr=self.stderr)

        def up():
            assert self.process.poll() is None, f"duckdb-ft serve exited: {self.log()[-2000:]}"
            try:
                return urllib.request.urlopen(self.url + "/health", timeout=2).status == 200
            except OSError:
                return False

        wait_for(up, timeout=180, what="duckdb-ft serve to answer /health", interval=0.2)

    def log(self) -> str:
        return Path(self.stderr.name).read_text()

    def stop(self, sig=None, timeout=120) -> int:
        """Send ``sig`` (default SIGTERM), wait for the exit; its status."""
        import signal

        if self.process.poll() is None:
            self.process.send_signal(sig or signal.SIGTERM)
        return self.process.wait(timeout)
