"""The decode loop across requests (duckdb_ft/ml/batcher.py) on the tiny model: COMPLETE's greedy tokens whatever
shares the batch, streaming, the bounded queue, timeouts, cancellation, closing."""

from __future__ import annotations

import json
import threading
import time

import pytest

import duckdb_ft
from conftest import wait_for
from duckdb_ft.ml import batcher as batching, complete as completion, models, prefix
from duckdb_ft.options import CompleteOptions

SCHEMA = ("Tables:\ncustomers(id, name, city, joined DATE)\nproducts(id, name, category, price)\n"
          "orders(id, customer_id, product_id, quantity, ordered_on DATE)\nQuestion: {q}\n"
          "Answer with one DuckDB SQL query.")
QUESTIONS = ["Count the orders.", "How many customers live in Austin?", "x", "List every product of category toys, "
             "cheapest first, with its price.", "Total revenue?", "Who joined last?", "Name the busiest city."]
LORA = {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "up_proj"], "task_type": "CAUSAL_LM"}


def request(text, **options):
    return completion.Request([{"role": "user", "content": text}], CompleteOptions(**options))


@pytest.fixture(scope="module")
def tiny_lora(tiny_model_path):
    """A LoadedModel of its own (not the cache's) on the tiny model, with random non-zero adapters ad_a and ad_b."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    loaded = models.LoadedModel(name="tiny", path=tiny_model_path, tokenizer=models.load_tokenizer(tiny_model_path),
                                model=AutoModelForCausalLM.from_pretrained(tiny_model_path).eval())
    for seed, name in enumerate(["ad_a", "ad_b"]):
        torch.manual_seed(seed)
        donor = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                               LoraConfig(**LORA, init_lora_weights=False))
        state = {k: v * 3 for k, v in get_peft_model_state_dict(donor).items()}
        models.attach_adapter(loaded, name, LORA, models.adapter_to_bytes(state))
    yield loaded
    if loaded.batcher is not None:
        loaded.batcher.close()


@pytest.mark.slow
def test_concurrent_greedy_requests_get_completes_tokens_whatever_shares_the_batch(con, tiny_model_path, tiny_lora):
    """8 threads submit the same greedy prompts at once, mixed with sampled rows, other lengths and an adapter's
    rows, through 5 slots (rows join and leave mid-way): each greedy answer equals SELECT complete(...)'s (base
    model) or COMPLETE's generate with that adapter."""
    prompts = [SCHEMA.format(q=q) for q in QUESTIONS[:4]]
    sql = [json.loads(o)["choices"][0]["messages"] for (o,) in con.execute(
        "SELECT complete(?, p, '{\"max_tokens\": 7}') FROM unnest(?) WITH ORDINALITY t(p, i) ORDER BY i",
        [tiny_model_path, prompts]).fetchall()]
    reference = {None: sql}
    for a in ("ad_a",):
        reqs = [request(p, max_tokens=7) for p in prompts]
        completion.generate(tiny_lora, reqs, a)
        reference[a] = [r.result.text for r in reqs]
    assert reference[None] != reference["ad_a"]  # the adapter really answers differently

    b = batching.Batcher(tiny_lora, slots=5)
    results: dict[tuple, list] = {}
    errors = []

    def client(t: int) -> None:
        try:
            adapter = [None, "ad_a"][t % 2]
            futures = []
            for k, p in enumerate(prompts):
                futures.append(((adapter, k), b.submit(request(p, max_tokens=7), adapter)))
                other = b.submit(request(f"Other question {t}.{k}", max_tokens=3 + (t + k) % 9,
                                         temperature=0.8 if k % 3 == 0 else 0.0), "ad_b" if k % 2 else None, seed=t)
                futures.append((None, other))
            for key, f in futures:
                out = f.result(timeout=120)
                if key is not None:
                    results.setdefault(key, []).append(out.text)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = b.stats()
    b.close()
    for (adapter, k), texts in results.items():
        assert texts == [reference[adapter][k]] * 4, (adapter, k)
    assert stats["queue_depth"] == 0 and stats["active_slots"] == 0 and stats["requests"] == 8 * 8
    assert stats["steps"] < stats["tokens"] / 2  # rows shared steps
    assert stats["prefill_tokens"] < stats["prompt_tokens"] * 0.7  # the schema prefix was mostly computed once


def test_streamed_deltas_concatenate_to_the_completion_text(tiny_model_path):
    loaded = models.load(tiny_model_path)
    b = batching.batcher_for(loaded)
    assert batching.batcher_for(loaded) is b and loaded.batcher is b  # one per loaded model, owned by it
    pieces: list[list[str]] = [[], []]
    futures = [b.submit(request("Tell me a long story about café crème brûlée 🍮.", max_tokens=40), None,
                        on_token=pieces[k].append) for k in range(2)]
    futures.append(b.submit(request("Tell me a long story", max_tokens=40, temperature=1.0), None, seed=3,
                            on_token=(sampled := []).append))
    reference = [request("Tell me a long story about café crème brûlée 🍮.", max_tokens=40)]
    completion.generate(loaded, reference)  # COMPLETE's answer
    for k, f in enumerate(futures[:2]):
        out = f.result(timeout=60)
        assert "".join(pieces[k]) == out.text == reference[0].result.text and len(pieces[k]) > 3
        assert out.completion_tokens == 40
    text = futures[2].result(timeout=60).text
    assert "".join(sampled) == text


def test_the_loop_holds_as_many_rows_as_completes_batches(tiny_model_path):
    """32 requests queued at once (the benchmark's 32 clients) decode in one batch: a loop holds COMPLETE's
    ``BATCH_ROWS`` rows, not fewer (16 rows a step cost a CPU about 1.5x the work per row: benchmarks/README.md)."""
    loaded = models.load(tiny_model_path)
    b = batching.Batcher(loaded)  # the default, as batcher_for makes it
    peak = [0]

    def seen(piece: str) -> None:  # called from the loop's thread, between its forwards
        peak[0] = max(peak[0], b.stats()["active_slots"])

    prompt = "Tell me a long story about café crème brûlée 🍮."
    with loaded.lock:  # the loop waits at its first forward while the others queue
        futures = [b.submit(request(prompt, max_tokens=12), None, on_token=seen) for _ in range(32)]
    answers = {(f.result(timeout=60).text, f.result().completion_tokens) for f in futures}
    b.close()
    assert b.slots == completion.BATCH_ROWS and peak[0] == 32
    assert len(answers) == 1 and next(iter(answers))[1] == 12  # one greedy answer, every row to its max_tokens


def test_stream_holds_back_whitespace_and_incomplete_characters(tiny_model_path):
    tok = models.load_tokenizer(tiny_model_path)
    text = "  Crème brûlée 🍮 is  sweet.  "
    ids = tok(text, add_special_tokens=False)["input_ids"]
    stream = batching.TextStream(tok)
    parts = [stream.update(ids[:n]) for n in range(1, len(ids) + 1)]
    final = tok.decode(ids, skip_special_tokens=True).strip()
    assert all("\ufffd" not in p for p in parts) and not parts[-1].endswith(" ")
    assert "".join(parts) + stream.rest(final) == final == text.strip()


def test_the_loop_admits_long_prompts_within_the_positions_budget(tiny_model_path, monkeypatch):
    """32 long requests queued at once: the loop runs no more rows than ``decode.position_budget`` holds (rows
    times the widest prompt plus max_tokens), so many clients' long prompts cannot grow the cache past memory;
    every request still gets its whole answer, the same greedy answer as alone."""
    from duckdb_ft.ml import decode

    loaded = models.load(tiny_model_path)
    prompt = "Summarise this: " + "the quick brown fox jumps over the lazy dog " * 6
    alone = batching.Batcher(loaded)
    expected = alone.submit(request(prompt, max_tokens=6), None).result(timeout=60).text
    alone.close()
    width = len(completion.prompt_ids(loaded, [{"role": "user", "content": prompt}])) + 6
    monkeypatch.setattr(decode, "position_budget", lambda model: 3 * width)
    b = batching.Batcher(loaded)
    peak = [0]

    def seen(piece: str) -> None:
        peak[0] = max(peak[0], b.stats()["active_slots"])

    with loaded.lock:
        futures = [b.submit(request(prompt, max_tokens=6), None, on_token=seen) for _ in range(32)]
    answers = [f.result(timeout=120) for f in futures]
    b.close()
    assert peak[0] == 3  # three fit the budget, no more ran at once
    assert {(a.text, a.completion_tokens) for a in answers} == {(expected, 6)}


def test_a_full_queue_refuses_at_once_and_the_queued_requests_still_finish(tiny_model_path):
    loaded = models.load(tiny_model_path)
    b = batching.Batcher(loaded, slots=1, queue_size=2)
    with loaded.lock:  # the loop blocks at its first forward: nothing leaves the queue
        first = b.submit(request("one", max_tokens=3), None)
        wait_for(lambda: b.stats()["queue_depth"] == 0, what="the first request admitted")
        queued = [b.submit(request(w, max_tokens=3), None) for w in ("two", "three")]
        with pytest.raises(duckdb_ft.QueueFull, match="queue holds 2"):
            b.submit(request("four", max_tokens=3), None)
        assert b.stats()["queue_depth"] == 2 and b.stats()["requests"] == 3
    assert [f.result(timeout=60).completion_tokens for f in [first, *queued]] == [3, 3, 3]
    b.close()


def test_bad_requests_are_refused_at_submit_and_queue_nothing(tiny_model_path, tiny_lora):
    b = batching.Batcher(models.load(tiny_model_path))
    with pytest.raises(duckdb_ft.InvalidArgument, match="exceeds the context"):
        b.submit(request("hi", max_tokens=10_000), None)
    with pytest.raises(duckdb_ft.ModelLoadError, match="no longer attached"):
        batching.Batcher(tiny_lora).submit(request("hi", max_tokens=2), "ad_gone")
    assert b.stats()["queue_depth"] == 0 and b.stats()["requests"] == 0 and b._thread is None
    b.close()
    with pytest.raises(duckdb_ft.Interrupted, match="closed"):
        b.submit(request("hi", max_tokens=2), None)


def test_timeouts_and_cancellation_free_the_slot(tiny_model_path):
    loaded = models.load(tiny_model_path)
    b = batching.Batcher(loaded, slots=1)
    with loaded.lock:
        running = b.submit(request("slow", max_tokens=50), None, timeout=0.2)
        waiting = b.submit(request("queued", max_tokens=5), None, timeout=0.2)
        time.sleep(0.3)
    with pytest.raises(duckdb_ft.RequestTimeout, match="timed out"):
        running.result(timeout=60)
    with pytest.raises(duckdb_ft.RequestTimeout):
        waiting.result(timeout=60)

    seen = []

    def gone(piece: str) -> None:  # the client goes away after its third piece of text
        seen.append(piece)
        if len(seen) == 3:
            b.cancel(cancelled)

    cancelled = b.submit(request("Tell me a long story.", max_tokens=200), None, on_token=gone)
    after = b.submit(request("next", max_tokens=4), None)
    assert after.result(timeout=60).completion_tokens == 4 and cancelled.cancelled()
    assert len(seen) == 3 and b.stats()["active_slots"] == 0 and b.stats()["tokens"] < 100
    b.close()


def test_adapters_of_queued_requests_are_not_evicted(tiny_lora, monkeypatch):
    monkeypatch.setattr(models, "MAX_ADAPTERS", 1)
    b = batching.Batcher(tiny_lora)
    with tiny_lora.lock:  # both adapters asked for, one allowed: neither is evicted while a request holds it
        futures = [b.submit(request("hi", max_tokens=2), a) for a in ("ad_a", "ad_b")]
        assert tiny_lora.evict_adapters() == [] and tiny_lora.pinned == {"ad_a": 1, "ad_b": 1}
    assert [f.result(timeout=60).completion_tokens for f in futures] == [2, 2]
    assert not tiny_lora.pinned and b.stats()["active_slots"] == 0
    b.close()


def test_the_loop_thread_exits_when_idle_and_close_fails_what_is_left(tiny_model_path, monkeypatch):
    monkeypatch.setattr(batching, "IDLE_EXIT", 0.1)
    loaded = models.load(tiny_model_path)
    b = batching.Batcher(loaded, slots=1)
    assert b.submit(request("hi", max_tokens=2), None).result(timeout=60).completion_tokens == 2
    wait_for(lambda: b._thread is None, what="the idle loop's exit")
    with loaded.lock:
        pending = [b.submit(request(w, max_tokens=3), None) for w in ("a", "b")]
        closer = threading.Thread(target=b.close)
        closer.start()
    closer.join()
    for f in pending:
        with pytest.raises(duckdb_ft.Interrupted):
            f.result(timeout=60)
    assert b._thread is None and b.stats()["active_slots"] == 0


def test_prefix_store_is_bounded_and_cut_to_the_common_length():
    import torch

    class Cache:  # what a transformers cache exposes: per layer keys and values (rows, heads, length, dim)
        def __init__(self, n):
            self.layers = [type("L", (), {"keys": torch.arange(n, dtype=torch.float)[None, None, :, None].repeat(
                2, 1, 1, 1), "values": torch.zeros(2, 1, n, 1)})()]

    store = prefix.Store(max_entries=2, max_tokens=100)
    a, b = list(range(30)), list(range(20)) + [99] * 10
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, :5] = 0  # row 1 left-padded
    store.keep(("k",), [a, b[:25]], [None, None], Cache(30), mask)
    assert [e[2] for e in store.entries] == [tuple(a)]  # the longest row of the adapter
    shared, kv = store.lookup(None, ("k",), [b], [None], None)
    assert shared == 20 and kv[None][0][0].flatten().tolist() == list(range(20))
    assert store.lookup(None, ("other",), [b], [None], None) == (0, {})
    for n in range(3):
        store.keep(("k",), [[n] * 40], ["ad"], Cache(40), torch.ones(1, 40, dtype=torch.long))
    assert len(store.entries) == 2 and sum(len(e[2]) for e in store.entries) <= 100


def test_a_stop_sequence_ends_the_row_and_cuts_its_text(tiny_model_path):
    loaded = models.load(tiny_model_path)
    b = batching.Batcher(loaded)
    whole = b.submit(request("Tell me a story.", max_tokens=30), None).result(timeout=60)
    assert whole.finish_reason == "length" and whole.completion_tokens == 30
    word = whole.text.split()[3]  # a stop sequence the greedy answer reaches mid-way
    pieces = []
    cut = b.submit(request("Tell me a story.", max_tokens=30), None, stop=[word, "never there"],
                   on_token=pieces.append).result(timeout=60)
    assert cut.text == whole.text[:whole.text.find(word)] and "".join(pieces) == cut.text
    assert cut.finish_reason == "stop" and cut.completion_tokens < 30
    b.close()

    tok = loaded.tokenizer
    ids = tok("SELECT 1;\n\nmore", add_special_tokens=False)["input_ids"]
    stream = batching.TextStream(tok, ["\n\n"])
    parts = [stream.update(ids[:n]) for n in range(1, len(ids) + 1)]
    assert stream.final == "SELECT 1;" and "".join(parts) + stream.rest(stream.final) == "SELECT 1;"
