"""COMPLETE throughput: SQL ``complete()`` over a table vs plain transformers loops, on the same model.

Three workloads (``--workloads a,b,c``), each in one process on one loaded copy of ``smollm2-135m``, greedy,
``max_tokens`` 32 (``--max-tokens``), COMPLETE against plain loops on the same prompts in the same run:

(a) **64 short unique prompts** (20 templates x 20 subjects, 33 to 53 tokens after the chat template):
    ``SELECT complete('smollm2-135m', prompt, '{"max_tokens": 32}') FROM prompts`` against a per-row loop (one
    ``model.generate`` per prompt; ``--no-per-row`` skips it) and **batched transformers**, a hand-written loop
    over left-padded batches of ``--batch`` (64) rows in table order.
(b) **256 template prompts**: a ~100-token shared prefix after the chat template (a system line and a schema,
    like the demo's ``sql_prompt``), 192 distinct questions, a quarter of the rows duplicates, shuffled. COMPLETE
    over the plain table, COMPLETE over the same 256 rows picked by a ``WHERE`` from a 10240-row table (DuckDB
    then hands the UDF one filtered vector at a time: about 51 rows per call, see benchmarks/README.md), the same
    ``WHERE`` in a subquery with ``ORDER BY`` (which hands over one compact chunk), and the batched transformers
    loop.
(c) **256 rows over 4 fine-tuned models of one base** (LoRA adapters made by four one-step FINETUNE jobs, a
    model name per row drawn at random): ``SELECT complete(model, prompt, ...) FROM mixed`` against the batched
    transformers loop run **one pass per adapter** (``set_adapter``, that adapter's rows in left-padded batches
    of 64 in table order), the way one would without mixed-adapter batches.

The model is loaded (load time reported apart) and warmed up before anything is timed. Each figure is rows/s from
``time.perf_counter`` around the whole pass; with ``--repeat R`` each workload's passes run R rounds, interleaved,
and each keeps its fastest pass (other work on a shared machine only ever slows a pass down). Outputs are
decoded as ``duckdb_ft/ml/complete.py`` decodes them (new tokens up to the first end token,
``skip_special_tokens=True``, stripped) and compared row by row with the batched loop's (fp32 both). The share
of prefill tokens saved is ``1 - (prompt tokens COMPLETE's model computed) / (prompt tokens of every row)``, from
the loaded model's ``stats``. The script exits 1 if fewer than 95% of COMPLETE's outputs equal the reference in
any workload.

Run from the repository root (``DUCKDB_FT_CACHE=.pytest_cache/model-cache`` reuses the test suite's converted
model)::

    .venv/bin/python benchmarks/complete_throughput.py                       # all three workloads
    .venv/bin/python benchmarks/complete_throughput.py --workloads b --repeat 2 --json /tmp/complete.json

Torch uses its default thread count for the machine. The figures move with machine load; compare the ratios
within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import torch

import duckdb_ft
from duckdb_ft.ml import complete as completion, models
from duckdb_ft.surface.engine import engine_of, session_of

MODEL = "smollm2-135m"
MATCH_TARGET = 0.95

TEMPLATES = [
    "What is {s}?",
    "Explain {s} in one sentence.",
    "Give me three facts about {s}.",
    "Why does {s} matter?",
    "Who first described {s}?",
    "How would you explain {s} to a ten-year-old who has never heard of it before?",
    "Is {s} a good topic for a school project?",
    "Write a short tweet about {s}.",
    "What are the main advantages and disadvantages of {s}, and when should someone care about them?",
    "Summarize {s}.",
    "List two common misconceptions about {s}.",
    "What is the history of {s}?",
    "Can you compare {s} with something from everyday life?",
    "Define {s}.",
    "What would happen to the world if {s} suddenly disappeared tomorrow morning?",
    "Name one book about {s}.",
    "How do scientists study {s}?",
    "In a few words: {s}?",
    "My friend says {s} is overrated. I am not sure what to answer. What do you think?",
    "What should a beginner learn first about {s}?",
]

SUBJECTS = [
    "photosynthesis",
    "the French Revolution",
    "black holes",
    "compound interest",
    "the water cycle",
    "machine learning",
    "the Roman Empire",
    "vaccines",
    "climate change",
    "the Pythagorean theorem",
    "coffee",
    "plate tectonics",
    "the stock market",
    "DNA",
    "the Great Wall of China",
    "renewable energy",
    "jazz",
    "the human heart",
    "SQL databases",
    "honey bees",
]


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct short questions of uneven length: templates x subjects, shuffled with a fixed seed."""
    pairs = [(t, s) for t in TEMPLATES for s in SUBJECTS]
    random.Random(seed).shuffle(pairs)
    if n > len(pairs):
        raise SystemExit(f"--rows {n} exceeds the {len(pairs)} distinct prompts this script can make")
    return [t.format(s=s) for t, s in pairs[:n]]


# --------------------------------------------------------------------------------------------------- helpers


def chat_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt as one user message through the chat template, with the assistant turn opened."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def decode_new(tokenizer: Any, new: Sequence[int], stop: set[int]) -> str:
    """New tokens up to the first end token, decoded as duckdb_ft/complete.py decodes them."""
    new = list(new)
    n = next((i for i, t in enumerate(new) if t in stop), len(new))
    return tokenizer.decode(new[:n], skip_special_tokens=True).strip()


def greedy(max_tokens: int, pad_id: int) -> dict[str, Any]:
    return dict(max_new_tokens=max_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                pad_token_id=pad_id)


SCHEMA = ("customers(id, name, city, joined DATE)\nproducts(id, name, category, price)\n"
          "orders(id, customer_id, product_id, quantity, ordered_on DATE)\n"
          "order_items(order_id, product_id, quantity, unit_price)\nsuppliers(id, name, country)")
QUESTIONS = ["How many orders did {s} place?", "List the products bought by {s}.", "What city is {s} from?",
             "What did {s} spend in total?", "When did {s} join?", "Which supplier sold the most to {s}?"]
PEOPLE = ["Elena Murphy", "Ali Khan", "Bo Chen", "Ana Silva", "Tom Berg", "Yuki Sato", "Omar Haddad", "Lea Roux",
          "Ivan Petrov", "Sara Cohen", "Jon Smith", "Mia Park", "Raj Patel", "Eva Novak", "Luis Gomez", "Nora Berg",
          "Kofi Mensah", "Ines Duarte", "Pavel Novak", "Aiko Tanaka", "Sven Olsen", "Dara Quinn", "Ravi Rao",
          "Zoe Adams", "Hugo Lambert", "Maya Levi", "Chen Wei", "Olga Ivanova", "Femi Ade", "Lars Berg",
          "Noor Aziz", "Tariq Ali"]


def template_prompt(question: str) -> str:
    """A demo-like prompt: an instruction and a schema (the shared part), then the question."""
    return (f"You translate questions about a shop into SQL for DuckDB. Use only these tables:\n{SCHEMA}\n"
            f"Question: {question}\nAnswer with one DuckDB SQL query.")


def make_template_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` rows: ``3n/4`` distinct questions in the shared template, and a quarter of the rows repeating them."""
    qs = [t.format(s=s) for t in QUESTIONS for s in PEOPLE]
    rng = random.Random(seed)
    rng.shuffle(qs)
    distinct = n - n // 4
    if distinct > len(qs):
        raise SystemExit(f"--template-rows {n} needs {distinct} distinct questions; this script has {len(qs)}")
    rows = qs[:distinct] + rng.sample(qs[:distinct], n // 4)
    rng.shuffle(rows)
    return [template_prompt(q) for q in rows]


# --------------------------------------------------------------------------------------------------- the runs


def run_complete(con: Any, sql: str, max_tokens: int) -> list[str]:
    rows = con.execute(sql, [json.dumps({"max_tokens": max_tokens})]).fetchall()
    return [json.loads(out)["choices"][0]["messages"] for *_, out in rows]


def run_per_row(loaded: models.LoadedModel, prompts: Sequence[str], max_tokens: int) -> list[str]:
    model, tok = loaded.model, loaded.tokenizer
    dev = next(model.parameters()).device
    stop = set(completion.stop_ids(model, tok))  # where COMPLETE stops
    outs = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([chat_ids(tok, p)], device=dev)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 **greedy(max_tokens, tok.pad_token_id))
            outs.append(decode_new(tok, out[0, ids.shape[1]:].tolist(), stop))
    return outs


def run_batched(loaded: models.LoadedModel, prompts: Sequence[str], max_tokens: int, batch: int) -> list[str]:
    """Left-padded batches of ``batch`` rows in table order (under whatever adapter is active)."""
    model, tok = loaded.model, loaded.tokenizer
    dev = next(model.parameters()).device
    stop = set(completion.stop_ids(model, tok))  # where COMPLETE stops
    outs = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch):
            enc = tok.pad({"input_ids": [chat_ids(tok, p) for p in prompts[i:i + batch]]},
                          padding_side="left", return_tensors="pt")
            width = enc["input_ids"].shape[1]
            out = model.generate(input_ids=enc["input_ids"].to(dev), attention_mask=enc["attention_mask"].to(dev),
                                 **greedy(max_tokens, tok.pad_token_id))
            outs.extend(decode_new(tok, row[width:].tolist(), stop) for row in out.cpu())
    return outs


def run_per_adapter(loaded: models.LoadedModel, prompts: Sequence[str], keys: Sequence[str], max_tokens: int,
                    batch: int) -> list[str]:
    """One batched pass per adapter: ``set_adapter``, then that adapter's rows in table order."""
    outs: list[str] = [""] * len(prompts)
    for key in dict.fromkeys(keys):
        rows = [i for i, k in enumerate(keys) if k == key]
        loaded.model.set_adapter(key)
        for i, text in zip(rows, run_batched(loaded, [prompts[i] for i in rows], max_tokens, batch)):
            outs[i] = text
    return outs


# --------------------------------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    name: str
    rows: int
    reference: str
    seconds: dict[str, float] = field(default_factory=dict)
    rows_per_s: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    equal_to_reference: dict[str, int] = field(default_factory=dict)
    prefill_saved: dict[str, float] = field(default_factory=dict)
    generate_calls: dict[str, int] = field(default_factory=dict)
    mismatches: list[dict[str, str]] = field(default_factory=list)


def measure(w: Workload, loaded: models.LoadedModel, runs: list[tuple[str, Callable[[], list[str]]]], repeat: int,
            prompts: Sequence[str]) -> None:
    """Run ``runs`` ``repeat`` rounds interleaved; keep each one's fastest; compare with ``w.reference``."""
    results: dict[str, list[str]] = {}
    for round_ in range(1, repeat + 1):
        for name, fn in runs:
            before = dict(loaded.stats)
            t0 = time.perf_counter()
            out = fn()
            s = time.perf_counter() - t0
            delta = {k: loaded.stats[k] - before.get(k, 0) for k in loaded.stats}
            if delta.get("prompt_tokens"):
                w.prefill_saved[name] = round(1 - delta["prefill_tokens"] / delta["prompt_tokens"], 4)
                w.generate_calls[name] = delta["generate_calls"]
            if name in results and out != results[name]:
                print(f"  note: {name} gave different outputs in round {round_}", flush=True)
            results[name], w.seconds[name] = out, round(min(s, w.seconds.get(name, s)), 3)
            print(f"  ({w.name}) {name:<24} {s:8.2f} s  {w.rows / s:7.2f} rows/s"
                  + (f"  (round {round_})" if repeat > 1 else ""), flush=True)
    ref = results[w.reference]
    for name in results:
        w.rows_per_s[name] = round(w.rows / w.seconds[name], 3)
        w.equal_to_reference[name] = sum(a == b for a, b in zip(results[name], ref))
    for name in results:
        if name.startswith("complete"):
            w.ratios[f"{name} / {w.reference}"] = round(w.rows_per_s[name] / w.rows_per_s[w.reference], 2)
            w.mismatches += [{"run": name, "prompt": p[-80:], "got": a, "reference": b}
                             for p, a, b in zip(prompts, results[name], ref) if a != b][:3]
    print(f"  ({w.name}) equal to {w.reference}: " + ", ".join(f"{k} {v}/{w.rows}" for k, v in
                                                     w.equal_to_reference.items())
          + "; " + ", ".join(f"{k} {v:.2f}x" for k, v in w.ratios.items())
          + "".join(f"; {k} prefill saved {100 * v:.1f}%" for k, v in w.prefill_saved.items()), flush=True)


def workload_a(con: Any, loaded: models.LoadedModel, args: Any) -> Workload:
    prompts = make_prompts(args.rows)
    con.execute("CREATE OR REPLACE TABLE prompts (id INTEGER, prompt VARCHAR)")
    con.executemany("INSERT INTO prompts VALUES (?, ?)", list(enumerate(prompts)))
    w = Workload("a", len(prompts), "batched")
    runs = [("complete", lambda: run_complete(
        con, f"SELECT id, complete('{MODEL}', prompt, ?) FROM prompts ORDER BY id", args.max_tokens)),
        ("batched", lambda: run_batched(loaded, prompts, args.max_tokens, args.batch))]
    if not args.no_per_row:
        runs.append(("per_row", lambda: run_per_row(loaded, prompts, args.max_tokens)))
    measure(w, loaded, runs, args.repeat, prompts)
    return w


def workload_b(con: Any, loaded: models.LoadedModel, args: Any) -> Workload:
    prompts = make_template_prompts(args.template_rows)
    con.execute("CREATE OR REPLACE TABLE tmpl (id INTEGER, prompt VARCHAR)")
    con.executemany("INSERT INTO tmpl VALUES (?, ?)", list(enumerate(prompts)))
    # The same rows, every 40th of a larger table, as a WHERE on a real table picks them.
    con.execute("CREATE OR REPLACE TABLE tmpl_big AS SELECT i AS id, (i % 40 = 0) AS pick, "
                f"'filler ' || i AS prompt FROM range({40 * len(prompts)}) t(i)")
    con.executemany("UPDATE tmpl_big SET prompt = ? WHERE id = ?", [(p, 40 * i) for i, p in enumerate(prompts)])
    shared = os.path.commonprefix([chat_ids(loaded.tokenizer, p) for p in prompts])
    print(f"  (b) {len(prompts)} rows, {len(set(prompts))} distinct, shared prefix {len(shared)} tokens, prompts "
          f"{min(len(chat_ids(loaded.tokenizer, p)) for p in prompts)}-"
          f"{max(len(chat_ids(loaded.tokenizer, p)) for p in prompts)} tokens", flush=True)
    w = Workload("b", len(prompts), "batched")
    runs = [("complete", lambda: run_complete(
        con, f"SELECT id, complete('{MODEL}', prompt, ?) FROM tmpl ORDER BY id", args.max_tokens)),
        ("complete_filtered", lambda: run_complete(
            con, f"SELECT id, complete('{MODEL}', prompt, ?) FROM tmpl_big WHERE pick ORDER BY id",
            args.max_tokens)),
        ("complete_filtered_sorted", lambda: run_complete(  # an ORDER BY below COMPLETE compacts the vectors
            con, f"SELECT id, complete('{MODEL}', prompt, ?) FROM (SELECT * FROM tmpl_big WHERE pick ORDER BY id)",
            args.max_tokens)),
        ("batched", lambda: run_batched(loaded, prompts, args.max_tokens, args.batch))]
    measure(w, loaded, runs, args.repeat, prompts)
    return w


def make_adapters(con: Any, n: int) -> list[str]:
    """``n`` fine-tuned models of the base: one FINETUNE step each, on a different target word."""
    names = [f"bench_adapter_{k}" for k in range(n)]
    words = ["apple", "zebra", "violet", "copper", "harbor", "meadow"]
    for k, name in enumerate(names):
        con.execute(f"CREATE OR REPLACE TABLE ft_{k} AS SELECT 'Say a word, please ' || i AS p, "
                    f"'{words[k % len(words)]}' AS c FROM range(8) t(i)")
    jobs = [con.execute("SELECT finetune('CREATE', ?, ?, ?, NULL, ?)",
                        [name, MODEL, f"SELECT p AS prompt, c AS completion FROM ft_{k}",
                         json.dumps({"max_epochs": 1, "batch_size": 8, "learning_rate": 0.01, "lora_r": 8})]
                        ).fetchall()[0][0] for k, name in enumerate(names)]
    for job in jobs:
        state = con.execute("SELECT finetune('WAIT', ?, 600)", [job]).fetchall()[0][0]
        if state != "SUCCESS":
            raise SystemExit(f"FINETUNE job {job} for the adapters ended {state}")
    return names


def workload_c(con: Any, loaded: models.LoadedModel, args: Any) -> Workload:
    t0 = time.perf_counter()
    names = make_adapters(con, args.adapters)
    engine, session = engine_of(con), session_of(con)
    keys = {n: engine.resolve_model(session, n)[1] for n in names}
    loaded = engine.resolve_model(session, names[0])[0]
    rng = random.Random(3)
    prompts = make_prompts(args.mixed_rows, seed=1)
    model_col = [rng.choice(names) for _ in prompts]
    counts = {n: model_col.count(n) for n in names}
    print(f"  (c) {args.adapters} adapters made in {time.perf_counter() - t0:.1f} s (not timed); rows per model "
          f"{sorted(counts.values())}", flush=True)
    con.execute("CREATE OR REPLACE TABLE mixed (id INTEGER, model VARCHAR, prompt VARCHAR)")
    con.executemany("INSERT INTO mixed VALUES (?, ?, ?)", [(i, m, p) for i, (m, p) in
                                                            enumerate(zip(model_col, prompts))])
    run_complete(con, "SELECT id, complete(model, prompt, ?) FROM mixed WHERE id < 8", 2)  # warm-up
    w = Workload("c", len(prompts), "batched_per_adapter")
    runs = [("complete", lambda: run_complete(
        con, "SELECT id, complete(model, prompt, ?) FROM mixed ORDER BY id", args.max_tokens)),
        ("batched_per_adapter", lambda: run_per_adapter(loaded, prompts, [keys[m] for m in model_col],
                                                        args.max_tokens, args.batch))]
    measure(w, loaded, runs, args.repeat, prompts)
    return w


# --------------------------------------------------------------------------------------------------- report


def main(argv: Sequence[str] | None = None) -> int:
    global MODEL
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="a,b,c", help="which workloads, comma-separated (default a,b,c)")
    ap.add_argument("--rows", type=int, default=64, help="(a) prompts in the table (default 64)")
    ap.add_argument("--template-rows", type=int, default=256, help="(b) rows of template prompts (default 256)")
    ap.add_argument("--mixed-rows", type=int, default=256, help="(c) rows over the adapters (default 256)")
    ap.add_argument("--adapters", type=int, default=4, help="(c) fine-tuned models of the base (default 4)")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens / max_new_tokens (default 32)")
    ap.add_argument("--batch", type=int, default=64, help="rows per batch of the plain batched loop (default 64)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of each workload's passes; keep the fastest")
    ap.add_argument("--no-per-row", action="store_true", help="(a) skip the slow per-row loop")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    ap.add_argument("--model", default=MODEL, help="base model (default smollm2-135m; a folder for a smoke test)")
    args = ap.parse_args(argv)
    MODEL = args.model
    chosen = [x.strip() for x in args.workloads.split(",") if x.strip()]

    t0 = time.perf_counter()
    loaded = models.load(MODEL)
    load_s = time.perf_counter() - t0
    con = duckdb_ft.connect()
    # Warm-up, untimed: first forward passes, the UDF path and the tokenizer.
    run_per_row(loaded, make_prompts(1), 4)
    run_batched(loaded, make_prompts(2), 4, 2)
    con.execute(f"SELECT complete('{MODEL}', 'Hello', '{{\"max_tokens\": 4}}')").fetchall()
    print(f"{MODEL}: max_tokens {args.max_tokens}, torch threads {torch.get_num_threads()}, device "
          f"{models.device()}, model load {load_s:.1f} s (not timed); workloads {','.join(chosen)}", flush=True)
    done = [{"a": workload_a, "b": workload_b, "c": workload_c}[k](con, loaded, args) for k in chosen]

    ok = True
    for w in done:
        print(f"workload ({w.name}), {w.rows} rows:")
        for name, rps in w.rows_per_s.items():
            extra = (f", prefill tokens saved {100 * w.prefill_saved[name]:.1f}%, "
                     f"{w.generate_calls[name]} generate calls" if name in w.prefill_saved else "")
            print(f"  {name:<20} {rps:7.2f} rows/s  equal to {w.reference}: {w.equal_to_reference[name]}/{w.rows}"
                  + extra)
        for k, v in w.ratios.items():
            print(f"  {k}: {v:.2f}x")
        for m in w.mismatches[:3]:
            print(f"  differs ({m['run']}): ...{m['prompt']!r}\n    got:       {m['got']!r}\n"
                  f"    reference: {m['reference']!r}")
        for name, eq in w.equal_to_reference.items():
            if name.startswith("complete") and eq < MATCH_TARGET * w.rows:
                ok = False
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": MODEL, "max_tokens": args.max_tokens, "batch": args.batch, "repeat": args.repeat,
                       "torch_threads": torch.get_num_threads(), "device": models.device(),
                       "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
                       "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                       "load_s": round(load_s, 2), "workloads": [asdict(w) for w in done]}, f, indent=2)
    if not ok:
        print(f"FAIL: fewer than {100 * MATCH_TARGET:.0f}% of COMPLETE's outputs equal the reference's",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
