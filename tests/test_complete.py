"""COMPLETE / TRY_COMPLETE through SQL on the tiny model: shapes, options, NULLs, errors, batching."""

from __future__ import annotations

import json

import duckdb
import pytest

import duckdb_ft
from conftest import rows as q
from duckdb_ft.ml import complete as completion, devices, models


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


def test_options_as_an_object_literal_as_cortex_scripts_write_them(con, tiny_model_path):
    """COMPLETE's options may be a SQL object literal (``{'max_tokens': 8}``, Cortex's form) as well as JSON text:
    the same answer, and a bad key or value is COMPLETE's own error, not a binder error naming internals."""
    text = q(con, "SELECT complete(?, 'Say something', '{\"max_tokens\": 8}')", tiny_model_path)[0][0]
    for sql in ("SELECT complete(?, 'Say something', {'max_tokens': 8})",
                "SELECT snowflake.cortex.complete(?, 'Say something', {'max_tokens': 8, 'temperature': 0})"):
        assert json.loads(q(con, sql, tiny_model_path)[0][0])["choices"] == json.loads(text)["choices"]
    with pytest.raises(duckdb_ft.InvalidArgument, match=r"unknown COMPLETE option\(s\): max_tokenz"):
        q(con, "SELECT complete(?, 'Hi', {'max_tokenz': 8})", tiny_model_path)
    with pytest.raises(duckdb_ft.InvalidArgument, match="max_tokens must be an integer of at least 1"):
        q(con, "SELECT complete(?, 'Hi', {'max_tokens': 'ten'})", tiny_model_path)
    assert q(con, "SELECT try_complete(?, 'Hi', {'max_tokens': 'ten'})", tiny_model_path) == [(None,)]


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
    ('{"temprature": 0.5}', r"unknown COMPLETE option\(s\): temprature; valid options: dtype, max_tokens, response_format, temperature, top_p"),
    ('{"dtype": "float16"}', 'dtype must be one of "float32", "bfloat16"'),
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


def count_generate(monkeypatch, loaded) -> list[int]:
    """The rows of each ``model.generate`` call on ``loaded`` from now on, in order."""
    calls: list[int] = []
    original = loaded.model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(loaded.model, "generate", counting)
    return calls


def test_a_chunk_is_generated_in_few_batches(con, tiny_model_path, monkeypatch):
    monkeypatch.setattr(models.load(tiny_model_path), "continuous", False)  # generate per batch (continuous: below)
    loaded = models.load(tiny_model_path)
    calls = count_generate(monkeypatch, loaded)
    rows = q(con, "SELECT complete(?, 'Question ' || i || repeat(' x', (i % 7)::INT), '{\"max_tokens\": 2}') "
                  "FROM range(100) t(i)", tiny_model_path)
    assert len(rows) == 100 and all(r[0] is not None for r in rows)
    assert calls == [64, 36]


def test_identical_greedy_rows_are_generated_once_and_answered_alike(con, tiny_model_path, monkeypatch):
    monkeypatch.setattr(models.load(tiny_model_path), "continuous", False)
    loaded = models.load(tiny_model_path)
    alone = {i: json.loads(q(con, "SELECT complete(?, ?, '{\"max_tokens\": 4}')", tiny_model_path,
                              f"Question {i}")[0][0]) for i in range(7)}
    calls = count_generate(monkeypatch, loaded)
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


@pytest.mark.slow
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


# ------------------------------------------------------------------ shared prefixes, several adapters in one batch

SCHEMA_PROMPT = ("Tables:\ncustomers(id, name, city, joined DATE)\nproducts(id, name, category, price)\n"
                 "orders(id, customer_id, product_id, quantity, ordered_on DATE)\nQuestion: {q}\n"
                 "Answer with one DuckDB SQL query.")
QUESTIONS = ["Count the orders.", "How many customers live in Austin?", "x", "List every product of category "
             "toys, cheapest first, with its price and the number of orders it appears in.", "Total revenue?",
             "Who joined last?", "Name the city with the most customers and the number of its customers."]


def _requests(questions, max_tokens=6):
    opts = completion.CompleteOptions(max_tokens=max_tokens)
    return [completion.Request([{"role": "user", "content": SCHEMA_PROMPT.format(q=q)}], opts) for q in questions]


def _answers(reqs):
    return [(r.result.text, r.result.completion_tokens) for r in reqs]


def test_shared_prefix_layout_keeps_a_token_per_row_and_skips_short_prefixes():
    from duckdb_ft.ml import prefix

    assert prefix.shared_length([[1] * 20 + [2], [1] * 20 + [3, 4]]) == 20
    assert prefix.shared_length([[1] * 20, [1] * 25]) == 19  # the shorter row keeps its last token
    assert prefix.shared_length([[1] * 5 + [2], [1] * 5 + [3]]) == 0  # below MIN_PREFIX_TOKENS
    assert prefix.shared_length([[1] * 20]) == 0
    ids, mask = prefix.layout([[7, 7, 1], [7, 7, 1, 2, 3]], 2, 0)
    assert ids.tolist() == [[7, 7, 0, 0, 1], [7, 7, 1, 2, 3]]
    assert mask.tolist() == [[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]]


def test_shared_prefix_cache_gives_the_uncached_answers_token_for_token(tiny_model_path, monkeypatch):
    from duckdb_ft.ml import prefix

    monkeypatch.setattr(models.load(tiny_model_path), "continuous", False)
    loaded = models.load(tiny_model_path)
    before = dict(loaded.stats)
    cached = _requests(QUESTIONS, 12)
    completion.generate(loaded, cached)
    computed = loaded.stats["prefill_tokens"] - before.get("prefill_tokens", 0)
    prompt = sum(len(r.ids) for r in cached)
    shared = prefix.shared_length([r.ids for r in cached])
    assert shared > 40 and computed == prompt - shared * (len(cached) - 1)  # the prefix ran once, not 7 times
    monkeypatch.setattr(prefix, "MIN_PREFIX_TOKENS", 10 ** 9)  # the reference: plain left-padded batches
    plain = _requests(QUESTIONS, 12)
    completion.generate(loaded, plain)
    assert _answers(cached) == _answers(plain)
    assert len({a for a, _ in _answers(plain)}) > 1  # the rows differ: the prefix path did not copy one answer


def _tiny_with_adapters(path, names):
    """A fresh (uncached) copy of the tiny model carrying random, non-zero LoRA adapters ``names``."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    loaded = models.LoadedModel(name="tiny", path=path, model=AutoModelForCausalLM.from_pretrained(path).eval(),
                                tokenizer=models.load_tokenizer(path))
    config = {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "up_proj"], "task_type": "CAUSAL_LM"}
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        donor = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                               LoraConfig(**config, init_lora_weights=False))
        state = {k: v * 3 for k, v in get_peft_model_state_dict(donor).items()}
        models.attach_adapter(loaded, name, config, models.adapter_to_bytes(state))
    return loaded


@pytest.mark.slow
def test_rows_of_several_adapters_generate_in_one_batch_as_they_would_alone(tiny_model_path, monkeypatch):
    from duckdb_ft.ml import prefix

    loaded = _tiny_with_adapters(tiny_model_path, ["ad_a", "ad_b", "ad_c"])
    monkeypatch.setattr(loaded, "continuous", False)
    names = [None, "ad_a", "ad_b", "ad_c"]
    plan = [(q, names[k % 4]) for k, q in enumerate(QUESTIONS * 2)]  # 14 rows, each adapter on several prompts
    calls = count_generate(monkeypatch, loaded)
    mixed = _requests([q for q, _ in plan], 10)
    completion.generate(loaded, mixed, adapters=[a for _, a in plan])
    assert calls == [14]  # one batch for the base and three adapters
    monkeypatch.setattr(prefix, "MIN_PREFIX_TOKENS", 10 ** 9)
    alone = {}
    for a in names:  # the reference: one plain pass per adapter, the way COMPLETE ran before
        reqs = _requests(QUESTIONS, 10)
        completion.generate(loaded, reqs, a)
        alone[a] = dict(zip(QUESTIONS, _answers(reqs)))
    assert _answers(mixed) == [alone[a][q] for q, a in plan]
    assert len({alone[a][QUESTIONS[0]] for a in names}) == 4  # the adapters really answer differently


@pytest.mark.slow
def test_complete_rows_batches_fine_tuned_models_of_one_base_together(tiny_model_path, monkeypatch):
    loaded = _tiny_with_adapters(tiny_model_path, ["ad_a", "ad_b"])
    monkeypatch.setattr(loaded, "continuous", False)
    targets = {"base": (loaded, None), "m_a": (loaded, "ad_a"), "m_b": (loaded, "ad_b")}
    calls = []
    original = loaded.model.generate
    monkeypatch.setattr(loaded.model, "generate", lambda *a, **k: calls.append(1) or original(*a, **k))
    models_col = ["m_a", "base", "m_b", "m_a", None, "m_b", "base"]
    prompts = [json.dumps(SCHEMA_PROMPT.format(q=q)) for q in QUESTIONS]  # the 3-argument form's to_json
    out = completion.complete_rows(targets.__getitem__, models_col, prompts, ['{"max_tokens": 5}'] * 7,
                                   try_mode=False)
    assert len(calls) == 1 and out[4] is None
    for m, p, got in zip(models_col, prompts, out):
        if m is None:
            continue
        one = completion.complete_rows(targets.__getitem__, [m], [p], ['{"max_tokens": 5}'], try_mode=False)[0]
        assert json.loads(got)["model"] == m
        assert json.loads(got)["choices"] == json.loads(one)["choices"]


@pytest.mark.slow
def test_continuous_batching_gives_generates_answers_token_for_token(tiny_model_path, monkeypatch):
    """Greedy rows of different max_tokens and adapters through decode.py, 5 slots for 21 rows (rows leave and
    join mid-way), against model.generate per batch of one adapter and one max_tokens without a prefix cache."""
    from duckdb_ft.ml import decode, prefix

    loaded = _tiny_with_adapters(tiny_model_path, ["ad_a", "ad_b"])
    questions = QUESTIONS * 3
    maxes = [3 + (k * 7) % 20 for k in range(len(questions))]
    mixed = [[None, "ad_a", "ad_b"][k % 3] for k in range(len(questions))]

    def requests():
        return [completion.Request([{"role": "user", "content": SCHEMA_PROMPT.format(q=q)}],
                                   completion.CompleteOptions(max_tokens=m)) for q, m in zip(questions, maxes)]

    widths = []
    forward = loaded.model.forward
    monkeypatch.setattr(loaded.model, "forward", lambda *a, **k: widths.append(k["input_ids"].shape) or forward(*a, **k))
    monkeypatch.setattr(completion, "BATCH_ROWS", 5)
    cont = {}
    for label, adapters in (("base", [None] * len(questions)), ("one", ["ad_a"] * len(questions)), ("mixed", mixed)):
        reqs = requests()
        completion.generate(loaded, reqs, adapters=adapters)
        cont[label] = _answers(reqs)
    steps = [w for w in widths if w[1] == 1]
    assert steps and max(w[0] for w in widths) <= 5  # never more than the slots
    assert any(w[0] < 5 for w in steps[:-5])  # rows left before the end
    assert [c for _, c in cont["base"]] == maxes  # each row its own max_tokens (the tiny model never ends early)
    monkeypatch.setattr(loaded, "continuous", False)
    monkeypatch.setattr(prefix, "MIN_PREFIX_TOKENS", 10 ** 9)
    for label, adapters in (("base", [None] * len(questions)), ("one", ["ad_a"] * len(questions)), ("mixed", mixed)):
        ref = {}
        for a in dict.fromkeys(adapters):
            rows = [k for k, x in enumerate(adapters) if x == a]
            reqs = requests()
            completion.generate(loaded, [reqs[k] for k in rows], a)
            ref.update(zip(rows, _answers([reqs[k] for k in rows])))
        assert cont[label] == [ref[k] for k in range(len(questions))], label
    assert decode.supported(loaded.model)


@pytest.mark.slow
def test_continuous_batching_stops_a_row_at_its_end_token(tiny_model_path, monkeypatch):
    from duckdb_ft.ml import decode

    loaded = models.load(tiny_model_path)
    ref = _requests(QUESTIONS, 8)
    monkeypatch.setattr(loaded, "continuous", False)
    completion.generate(loaded, ref)
    # A stop token that row 0 produces later than its first token (the first such token: the tiny model may repeat
    # one), so the row ends there, mid-answer, and its answer is cut as generate's is.
    import torch
    ids = [loaded.tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=True) for r in ref]
    ids = [list(i["input_ids"] if hasattr(i, "keys") else i) for i in ids]
    rows = [decode.Row(ids=s, max_new=8) for s in ids]
    with torch.inference_mode():
        decode.greedy(loaded.model, rows, slots=4, pad=loaded.tokenizer.pad_token_id, stop={-1}, mixed=False)
    first = rows[0].new
    k = next((k for k in range(1, len(first)) if first[k] not in first[:k]), 0)
    stop = first[k]
    again = [decode.Row(ids=s, max_new=8) for s in ids]
    with torch.inference_mode():
        decode.greedy(loaded.model, again, slots=4, pad=loaded.tokenizer.pad_token_id, stop={stop}, mixed=False)
    assert again[0].new == first[:k + 1]
    for a, r in zip(again, rows):
        cut = next((k for k, t in enumerate(r.new) if t == stop), len(r.new))
        assert a.new == r.new[:cut + 1]


@pytest.mark.slow
def test_stacked_lora_mix_computes_each_rows_own_adapter_and_falls_back_for_other_variants(tiny_model_path):
    """lora_mix.Mixer: one forward over rows of the base and three adapters gives each row the logits of its
    adapter alone (peft's per-adapter path); a DoRA adapter in the batch falls back to peft's adapter_names."""
    import torch
    from peft import LoraConfig

    from duckdb_ft.ml import lora_mix

    loaded = _tiny_with_adapters(tiny_model_path, ["ad_a", "ad_b", "ad_c"])
    model = loaded.model
    names = [None, "ad_a", "ad_b", "ad_c", "ad_b", None]
    ids = torch.tensor([[5, 9, 14, 3, 22, 7]] * len(names))
    with torch.inference_mode():
        # Each adapter alone over the same batch shape as the mixed pass: a matmul's rounding depends on its row
        # count on some CPUs' kernels (1e-4 apart between 1 and 6 rows on AVX-512 without AMX), which would blur
        # what is tested here, the stacked LoRA's arithmetic.
        alone = {}
        for a in dict.fromkeys(names):
            with completion._adapter(model, a):
                alone[a] = model(input_ids=ids).logits
        mixer = lora_mix.Mixer(model, names)
        assert mixer.stacked
        with mixer:
            got = model(input_ids=ids, **mixer.kwargs(names)).logits
        plain = model(input_ids=ids).logits  # the Mixer put every layer's own forward back
    for k, a in enumerate(names):
        if a is None:  # a base row of a mixed batch is the base layer's output itself
            assert torch.equal(got[k], alone[a][k])
        else:  # fp32 rounding of another order of the same sums: 1.6e-4 at most on logits near 11, where
            # the adapters move the logits by 16 to 18 from the base and from one another
            torch.testing.assert_close(got[k], alone[a][k], rtol=1e-4, atol=1e-3)
    assert not torch.allclose(alone["ad_a"], alone["ad_b"]) and not torch.allclose(alone[None], alone["ad_c"])
    torch.testing.assert_close(plain, alone["ad_c"])  # ad_c was the active adapter during the `alone` pass
    model.add_adapter("dora", LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    fallback = lora_mix.Mixer(model, ["ad_a", "dora"])
    assert not fallback.stacked and fallback.kwargs(["dora", None]) == {"adapter_names": ["dora", "__base__"]}


def test_dtype_bfloat16_runs_the_matmuls_in_bfloat16_apart_from_float32_rows(con, tiny_model_path, monkeypatch):
    """A bfloat16 row computes its projections in bf16 (autocast), float32 rows of the same call stay float32
    and answer as a float32-only call; without native bf16 the option is a clear error (NULL in TRY_COMPLETE)."""
    import torch

    loaded = models.load(tiny_model_path)
    monkeypatch.setattr(devices, "bfloat16_native", lambda device: True)  # torch emulates it where it is not
    seen = []
    hook = loaded.model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    try:
        fp32, bf16 = '{"max_tokens": 6}', '{"max_tokens": 6, "dtype": "bfloat16"}'
        alone = q(con, "SELECT complete(?, 'Count the orders.', ?)", tiny_model_path, fp32)
        assert set(seen) == {torch.float32}
        seen.clear()
        both = q(con, "SELECT complete(?, p, o) FROM (VALUES ('Count the orders.', ?), ('Count the orders.', ?)) "
                      "t(p, o)", tiny_model_path, fp32, bf16)
        assert set(seen) == {torch.float32, torch.bfloat16}  # two groups: one per dtype
        assert json.loads(both[0][0])["choices"] == json.loads(alone[0][0])["choices"]
        assert json.loads(both[1][0])["usage"]["completion_tokens"] == 6
    finally:
        hook.remove()
    monkeypatch.setattr(devices, "bfloat16_native", lambda device: False)
    with pytest.raises(duckdb.Error, match='dtype "bfloat16" needs hardware that computes bfloat16 natively.*'
                                           'use "float32"'):
        q(con, "SELECT complete(?, 'hi', ?)", tiny_model_path, bf16)
    assert q(con, "SELECT try_complete(?, 'hi', ?)", tiny_model_path, bf16) == [(None,)]


def test_an_answer_cut_inside_a_character_drops_the_partial_character(default_model_path):
    """``max_tokens`` may end a row between the byte tokens of one character: the answer ends before it, not
    with U+FFFD; a whole character stays."""
    tok = models.load_tokenizer(default_model_path)
    ids = tok.encode("Duck 🦆", add_special_tokens=False)
    assert "\ufffd" in tok.decode(ids[:-1])  # the duck's last byte is its own token
    assert completion.answer_text(tok, ids[:-1]) == "Duck"
    assert completion.answer_text(tok, ids) == "Duck 🦆"


def test_long_prompts_run_fewer_rows_a_batch_within_the_positions_budget(tiny_model_path, monkeypatch):
    """A batch holds at most ``decode.position_budget`` positions (rows times the widest prompt plus its new
    tokens), so a table of long documents cannot fill 64 slots with a cache past the machine's memory; greedy
    answers are the same whatever the batches. (A model of the test's own: no other test's thread runs it.)"""
    from transformers import AutoModelForCausalLM

    from duckdb_ft.ml import decode
    from duckdb_ft.options import CompleteOptions

    loaded = models.LoadedModel(name="tiny", path=tiny_model_path, tokenizer=models.load_tokenizer(tiny_model_path),
                                model=AutoModelForCausalLM.from_pretrained(tiny_model_path).eval())
    docs = [f"doc {i}: " + "word " * (20 + 3 * i) for i in range(12)]

    def run(**options):
        reqs = [completion.Request([{"role": "user", "content": d}], CompleteOptions(max_tokens=4, **options))
                for d in docs]
        completion.generate(loaded, reqs)
        return [r.result.text for r in reqs]

    before = run()
    seen: list[tuple[int, int]] = []

    def record(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            seen.append(tuple(mask.shape))

    budget = 220
    monkeypatch.setattr(decode, "position_budget", lambda model: budget)
    hook = loaded.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        assert run() == before
        greedy_seen = list(seen)
        sampled = run(temperature=0.8)
    finally:
        hook.remove()
    assert len(sampled) == 12 and all(sampled)
    assert greedy_seen and len(seen) > len(greedy_seen)  # both paths ran through the model
    assert max(rows for rows, _ in seen) >= 2  # still batched
    assert all(rows * width <= budget for rows, width in seen), seen
    row = lambda width: decode.Row(ids=[0] * (width - 1), max_new=1)  # noqa: E731 - prompt plus new tokens
    assert decode.fitting([row(500)], 100) == 1  # a row wider than the budget still runs, alone
    assert decode.fitting([row(50)] * 3, 100, [row(40)]) == 1 and decode.fitting([row(50)], 100, [row(40)] * 2) == 0
