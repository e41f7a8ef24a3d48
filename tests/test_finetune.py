"""FINETUNE on the tiny model: the lifecycle, DESCRIBE/SHOW/history, bad input, CANCEL, adapters in COMPLETE."""

from __future__ import annotations

import json

import duckdb
import pytest

import duckdb_ft
from conftest import APPLE_PROMPTS, FAST, LEARN, catalog_counts, create, describe, one, wait, wait_for


def test_lifecycle_create_describe_show_history(faq, tiny_model_path):
    con = faq
    job = create(con, "support_bot", tiny_model_path, "SELECT question AS prompt, answer AS completion FROM faq",
                 options=FAST)
    assert job.startswith("ft_") and len(job) == 39
    assert wait(con, job) == "SUCCESS"
    d = describe(con, job)
    assert d["status"] == "SUCCESS" and d["progress"] == 1.0
    assert d["model"] == "main.support_bot" and d["base_model"] == tiny_model_path
    assert d["training_result"]["training_loss"] > 0 and d["training_result"]["validation_loss"] > 0
    assert d["finished_on"] >= d["created_on"]
    assert d["train_rows"] + d["validation_rows"] == 24 and d["validation_rows"] >= 1
    assert d["options"]["max_epochs"] == 2 and d["options"]["lora_r"] == 16
    assert "error" not in d

    # trained_tokens = tokens of the training rows x epochs, counted here with the tokenizer directly.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    train_rows = con.execute("SELECT prompt, completion FROM duckdb_ft.job_rows WHERE job_id = ? AND split = 'train'",
                             [job]).fetchall()
    tokens = sum(len(tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                                             tokenize=True, return_dict=False)) for p, c in train_rows)
    assert d["trained_tokens"] == tokens * 2

    shown = json.loads(one(con, "SELECT finetune('SHOW')"))
    assert [j["id"] for j in shown] == [job] and shown[0]["status"] == "SUCCESS"
    assert con.execute("SELECT id, status FROM finetune('SHOW')").fetchall() == [(job, "SUCCESS")]
    assert con.execute("SELECT status, progress, training_result.training_loss > 0 FROM finetune('DESCRIBE', ?)",
                       [job]).fetchall() == [("SUCCESS", 1.0, True)]
    history = con.execute("SELECT step, epoch, training_loss, validation_loss FROM finetune_history(?)",
                          [job]).fetchall()
    assert [h[0] for h in history] == list(range(1, d["total_steps"] + 1))
    assert history[-1][1] == 2.0
    assert all(h[2] > 0 for h in history)
    assert sum(h[3] is not None for h in history) == 2  # validation at each epoch's end
    model = con.execute("SELECT schema_name, name, octet_length(adapter) > 1000, job_id FROM duckdb_ft.models")
    assert model.fetchall() == [("main", "support_bot", True, job)]


@pytest.mark.slow
def test_finetuned_model_completes_differently_from_base(faq, tiny_model_path):
    con = faq
    job = create(con, "coder", tiny_model_path, "SELECT question AS prompt, answer AS completion FROM faq",
                 options=LEARN)
    assert wait(con, job) == "SUCCESS"
    d = describe(con, job)
    history = con.execute("SELECT training_loss FROM finetune_history(?) ORDER BY step", [job]).fetchall()
    assert history[-1][0] < history[0][0] * 0.5, "the training loss should have fallen"
    tuned, base = con.execute("SELECT complete('coder', 'What is code number 3?', '{\"max_tokens\": 6}'), "
                              "complete(?, 'What is code number 3?', '{\"max_tokens\": 6}')",
                              [tiny_model_path]).fetchall()[0]
    tuned_text = json.loads(tuned)["choices"][0]["messages"]
    assert tuned_text != json.loads(base)["choices"][0]["messages"]
    assert tuned_text.startswith("The code is"), tuned_text
    assert d["training_result"]["validation_loss"] < history[0][0] * 0.6


@pytest.mark.slow
def test_several_adapters_of_one_base_in_one_query(apple_copy, tiny_model_path):
    """Two adapters of the tiny model and the model itself, mixed row by row in one COMPLETE query: each row gets
    its own model's answer. The apple adapter is the ``apple`` set-up's model 'exported' (trained once a run), the
    zebra one the same job on 'zebra zebra zebra'."""
    con = duckdb_ft.connect(apple_copy[0])
    try:
        con.execute("CREATE TABLE b AS SELECT 'Say the word ' || i AS p, 'zebra zebra zebra' AS c FROM range(16) t(i)")
        jb = create(con, "m_zebra", tiny_model_path, "SELECT p AS prompt, c AS completion FROM b", options=LEARN)
        assert wait(con, jb) == "SUCCESS"
        opts = '{"max_tokens": 8}'
        alone = {m: json.loads(one(con, f"SELECT complete('{m}', 'Say the word 3', '{opts}')")
                               )["choices"][0]["messages"] for m in ("exported", "m_zebra")}
        alone["base"] = json.loads(one(con, f"SELECT complete(?, 'Say the word 3', '{opts}')", tiny_model_path)
                                   )["choices"][0]["messages"]
        assert "apple" in alone["exported"] and "zebra" in alone["m_zebra"]
        mixed = con.execute("SELECT m, complete(CASE m WHEN 'base' THEN ? ELSE m END, 'Say the word 3', ?)::JSON "
                            "->> '$.choices[0].messages' FROM "
                            "(VALUES ('exported'), ('m_zebra'), ('base'), ('exported'), ('m_zebra')) t(m)",
                            [tiny_model_path, opts]).fetchall()
        for m, text in mixed:
            assert text == alone[m], m
    finally:
        con.close()


def test_aliased_columns_from_a_view_and_explicit_validation(faq, tiny_model_path):
    con = faq
    con.execute("CREATE VIEW pairs AS SELECT question AS q, answer AS a, n FROM faq")
    job = create(con, "from_view", tiny_model_path, "SELECT q AS prompt, a AS completion FROM pairs WHERE n < 20",
                 "SELECT q AS prompt, a AS completion FROM pairs WHERE n >= 20;", FAST)
    assert wait(con, job) == "SUCCESS"
    d = describe(con, job)
    assert (d["train_rows"], d["validation_rows"]) == (20, 4)
    assert d["validation_data"].startswith("SELECT q AS prompt")


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_lr_scheduler_type_shapes_the_recorded_learning_rate(faq, tiny_model_path, kind):
    """Each step's learning rate in duckdb_ft.metrics rises over the warm-up, then follows transformers' own
    schedule of that name (get_linear/cosine/constant_schedule_with_warmup) step for step."""
    import math

    import torch
    from transformers import optimization

    con = faq
    job = create(con, f"sched_{kind}", tiny_model_path, "SELECT question AS prompt, answer AS completion FROM faq",
                 options={"max_epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "warmup_ratio": 0.25,
                          "lr_scheduler_type": kind})
    assert wait(con, job) == "SUCCESS"
    lrs = [r[0] / 1e-3 for r in con.execute("SELECT learning_rate FROM duckdb_ft.metrics WHERE job_id = ? AND "
                                            "training_loss IS NOT NULL ORDER BY step", [job]).fetchall()]
    total = len(lrs)
    warmup = math.ceil(0.25 * total)
    assert total >= 8 and lrs[:warmup] == sorted(lrs[:warmup]) and lrs[warmup - 1] < 1  # the warm-up rises
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    hf = (optimization.get_constant_schedule_with_warmup(opt, warmup) if kind == "constant" else
          getattr(optimization, f"get_{kind}_schedule_with_warmup")(opt, warmup, total))
    assert lrs[warmup:] == pytest.approx([hf.lr_lambdas[0](s) for s in range(warmup, total)], abs=1e-9)
    assert describe(con, job)["options"]["lr_scheduler_type"] == kind


def test_null_rows_are_skipped_and_counted(con, tiny_model_path):
    con.execute("CREATE TABLE t AS SELECT * FROM (VALUES ('a', 'b'), (NULL, 'c'), ('d', NULL), ('e', 'f')) v(p, c)")
    job = create(con, "nulls", tiny_model_path, "SELECT p AS prompt, c AS completion FROM t", options=FAST)
    assert wait(con, job) == "SUCCESS"
    d = describe(con, job)
    assert d["skipped_rows"] == 2 and d["train_rows"] == 2
    assert d["validation_data"].startswith("training rows")  # too few rows to hold some out


@pytest.mark.slow
def test_long_pairs_are_truncated_and_counted(con, tiny_model_path):
    con.execute("CREATE TABLE t AS SELECT 'short ' || i AS p, repeat('long answer ', 200) AS c FROM range(3) t(i)")
    job = create(con, "trunc", tiny_model_path, "SELECT p AS prompt, c AS completion FROM t",
                 options={**FAST, "max_seq_length": 64})
    assert wait(con, job) == "SUCCESS"
    assert describe(con, job)["truncated_rows"] == 3


BAD_CREATES = [
    (("1bad", None, "SELECT question AS prompt, answer AS completion FROM faq", None, None), "invalid model name '1bad'"),
    (("a.b.c", None, "SELECT question AS prompt, answer AS completion FROM faq", None, None), "invalid model name"),
    (("x'; DROP TABLE faq; --", None, "SELECT 1", None, None), "invalid model name"),
    (("nosuch.m", None, "SELECT question AS prompt, answer AS completion FROM faq", None, None),
     "schema 'nosuch' does not exist"),
    (("m", "no-such-base", "SELECT question AS prompt, answer AS completion FROM faq", None, None),
     "unknown model 'no-such-base'"),
    (("m", None, "SELECT question AS prompt, answer AS completion FROM faq", None, '{"max_epochs": 11}'),
     "max_epochs must be an integer from 1 to 10"),
    (("m", None, "SELECT question AS prompt, answer AS completion FROM faq", None, '{"epochs": 2}'),
     r"unknown FINETUNE option\(s\): epochs; valid options: .*max_epochs"),
    (("m", None, "SELECT question AS prompt, answer AS completion FROM faq", None, '{"learning_rate": "fast"}'),
     "learning_rate must be a number"),
    (("m", None, "SELECT question AS prompt, answer AS completion FROM faq", None,
      '{"lr_scheduler_type": "cosine_with_restarts"}'), 'lr_scheduler_type must be one of "linear", "cosine", '
     '"constant"'),
    (("m", None, "SELECT question AS prompt, answer AS completion FROM faq", None, "{not json"), "not valid JSON"),
    (("m", None, "DROP TABLE faq", None, None), "must be a SELECT statement, got DROP"),
    (("m", None, "SELECT 1 AS prompt, 2 AS completion; DELETE FROM faq", None, None), "exactly one SELECT"),
    (("m", None, "COPY faq TO '/tmp/x.csv'", None, None), "must be a SELECT statement, got COPY"),
    (("m", None, "ATTACH '/tmp/other.db'", None, None), "must be a SELECT statement"),
    (("m", None, "PRAGMA version", None, None), "must be a SELECT statement"),
    (("m", None, "SET threads = 1", None, None), "must be a SELECT statement"),
    (("m", None, "", None, None), "training query is empty"),
    (("m", None, "SELECT 'unterminated AS prompt", None, None), "cannot parse SQL"),
    (("m", None, "SELECT question, answer FROM faq", None, None),
     r"must return columns prompt and completion; it returned: question VARCHAR, answer VARCHAR\. "
     r"Alias your columns, e.g\. SELECT question AS prompt, answer AS completion"),
    (("m", None, "SELECT question AS prompt, n AS completion FROM faq", None, None),
     "column completion of the training query must be text"),
    (("m", None, "SELECT question AS prompt, answer AS completion FROM no_such_table", None, None),
     "the training query fails: Catalog Error: Table with name no_such_table does not exist"),
    (("m", None, "SELECT question AS prompt, answer AS completion FROM faq WHERE n < 0", None, None),
     "returned no row with both prompt and completion non-NULL"),
    (("m", None, "SELECT question AS prompt, answer AS completion FROM faq", "SELECT 1 AS prompt", None),
     "the validation query must return columns prompt and completion"),
]


@pytest.mark.parametrize("args, message", BAD_CREATES, ids=[m[:40] for _, m in BAD_CREATES])
def test_bad_create_is_a_clear_error_that_changes_nothing(faq, tiny_model_path, args, message):
    con = faq
    before = catalog_counts(con)
    faq_before = con.execute("SELECT count(*), sum(hash(question, answer)) FROM faq").fetchall()
    name, base, query, validation, options = args
    with pytest.raises(duckdb.Error, match=message):
        con.execute("SELECT finetune('CREATE', ?, ?, ?, ?, ?)", [name, base or tiny_model_path, query, validation,
                                                                 options]).fetchall()
    assert catalog_counts(con) == before
    assert con.execute("SELECT count(*), sum(hash(question, answer)) FROM faq").fetchall() == faq_before


@pytest.mark.slow
def test_name_taken_by_model_or_active_job(faq, tiny_model_path):
    con = faq
    q = "SELECT question AS prompt, answer AS completion FROM faq"
    job = create(con, "taken", tiny_model_path, q, options=FAST)
    with pytest.raises(duckdb.Error, match=rf"model name 'main.taken' is taken by job {job} \(which is creating "
                                           r"it\): choose another name"):  # one clean sentence, no stray ',:'
        create(con, "taken", tiny_model_path, q, options=FAST)
    assert wait(con, job) == "SUCCESS"
    before = catalog_counts(con)
    with pytest.raises(duckdb.Error, match="model name 'main.taken' is taken by a model"):
        create(con, "TAKEN", tiny_model_path, q, options=FAST)  # names fold to lower case, as DuckDB's
    assert catalog_counts(con) == before


def test_unknown_action_lists_the_valid_ones(con):
    with pytest.raises(duckdb.Error, match="unknown FINETUNE action 'LIST'; valid actions: CREATE, SHOW, DESCRIBE"):
        one(con, "SELECT finetune('LIST')")
    with pytest.raises(duckdb.Error, match="fine-tuning job 'ft_nope' does not exist"):
        one(con, "SELECT finetune('DESCRIBE', 'ft_nope')")


def test_interrupt_ends_wait_and_the_job_goes_on(faq, tiny_model_path, monkeypatch):
    """Ctrl-C in the shell (``con.interrupt()`` from another thread) ends finetune('WAIT') at once, not at its
    timeout; the job keeps training, and the connection works."""
    import threading

    con = faq
    con.execute("CREATE TABLE big AS SELECT 'prompt ' || i AS p, 'completion ' || i AS c FROM range(400) t(i)")
    slow = create(con, "slow", tiny_model_path, "SELECT p AS prompt, c AS completion FROM big",
                  options={"max_epochs": 10, "batch_size": 1})
    seen = {}
    waiting = threading.Event()  # set once WAIT is blocked in the job runner, where the interrupt must reach it
    jobs = con.session.engine.jobs
    real_wait = jobs.wait
    monkeypatch.setattr(jobs, "wait", lambda *a, **k: waiting.set() or real_wait(*a, **k))

    def waiter():
        try:
            seen["status"] = wait(con, slow, 300)
        except duckdb.Error as e:
            seen["error"] = str(e)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert waiting.wait(120), "WAIT never started"
    con.interrupt()
    thread.join(60)  # the job runs for minutes: a WAIT that ended did so because of the interrupt
    assert not thread.is_alive(), seen
    # DuckDB reports its own "Interrupted!" or, when the function's error reaches it first, WAIT's message.
    assert "Interrupted!" in seen["error"] or f"finetune('WAIT', '{slow}') was interrupted" in seen["error"]
    assert describe(con, slow)["status"] in ("PENDING", "IN_PROGRESS")
    assert one(con, "SELECT 42") == 42
    assert one(con, "SELECT finetune('CANCEL', ?)", slow) == f"Canceled fine-tuning job: {slow}"
    assert wait(con, slow, 60) == "CANCELLED"  # a later WAIT is not interrupted by the earlier Ctrl-C


@pytest.mark.slow
def test_cancel_running_and_pending_jobs(faq, tiny_model_path):
    con = faq
    con.execute("CREATE TABLE big AS SELECT 'prompt ' || i AS p, 'completion ' || i AS c FROM range(400) t(i)")
    slow = create(con, "slow", tiny_model_path, "SELECT p AS prompt, c AS completion FROM big",
                  options={"max_epochs": 10, "batch_size": 1})
    queued = create(con, "queued", tiny_model_path, "SELECT p AS prompt, c AS completion FROM big", options=FAST)
    wait_for(lambda: describe(con, slow)["status"] == "IN_PROGRESS", 300, "the first job to start")
    assert describe(con, queued)["status"] == "PENDING"  # one job at a time
    assert one(con, "SELECT finetune('CANCEL', ?)", queued) == f"Canceled fine-tuning job: {queued}"
    assert one(con, "SELECT finetune('CANCEL', ?)", slow) == f"Canceled fine-tuning job: {slow}"
    assert wait(con, slow, 60) == "CANCELLED"
    assert describe(con, queued)["status"] == "CANCELLED"
    assert describe(con, slow)["progress"] < 1
    assert one(con, "SELECT count(*) FROM duckdb_ft.models") == 0
    assert one(con, "SELECT count(*) FROM duckdb_ft.checkpoints") == 0
    with pytest.raises(duckdb.Error, match="is CANCELLED: only PENDING or IN_PROGRESS jobs can be cancelled"):
        one(con, "SELECT finetune('CANCEL', ?)", slow)
    # the name is free again
    job = create(con, "slow", tiny_model_path, "SELECT p AS prompt, c AS completion FROM big LIMIT 8", options=FAST)
    assert wait(con, job) == "SUCCESS"


@pytest.mark.slow
def test_model_persists_in_the_database_file(apple_copy):
    """The ``apple`` fixture trained model 'exported' and took COMPLETE's answers before closing its file: opened
    again (a copy of it), the model answers the same."""
    path, job, before = apple_copy
    con = duckdb_ft.connect(path)
    try:
        for prompt, answer in zip(APPLE_PROMPTS, before):
            again = json.loads(one(con, "SELECT complete('exported', ?, '{\"max_tokens\": 6, \"temperature\": 0}')",
                                   prompt))
            assert again["choices"] == answer["choices"] and again["usage"] == answer["usage"], prompt
        assert "apple" in before[0]["choices"][0]["messages"]  # what it learned, not a base model's noise
        assert describe(con, job)["status"] == "SUCCESS"
    finally:
        con.close()


@pytest.mark.slow
def test_export_writes_a_peft_folder_that_peft_loads(apple_copy, tmp_path, tiny_model_path):
    """duckdb-ft export: PeftModel.from_pretrained(base, folder) gives the same completion as COMPLETE."""
    import subprocess
    import sys

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    db, _, answers = apple_copy  # the command line opens the file for writing: not the workers' shared one
    ours = answers[APPLE_PROMPTS.index("Say the word 3")]

    folder = tmp_path / "adapter"
    run = subprocess.run([sys.executable, "-m", "duckdb_ft", "export", db, "exported", str(folder)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "adapter_config.json").is_file()
    again = subprocess.run([sys.executable, "-m", "duckdb_ft", "export", db, "exported", str(folder)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "exists already" in again.stderr and "Traceback" not in again.stderr

    tok = AutoTokenizer.from_pretrained(folder)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), folder).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "Say the word 3"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert text.startswith(ours["choices"][0]["messages"][:10])
    assert "apple" in text
