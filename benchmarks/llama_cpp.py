"""duckdb-ft against llama.cpp (issue 37): the same fine-tuned model, the same 20 prompts and chat template.

Trains SmolLM2-135M for one short epoch (or takes ``--database DB --model NAME``), exports it ``gguf`` (merged),
``gguf-lora`` (the adapter alone) and the base model ``gguf``, and serves each in llama.cpp's own server
(llama-server's code, in process through xllamacpp: its OpenAI-compatible HTTP API, continuous batching over
parallel slots, the GGUF's Jinja chat template, LoRA adapters), asked through the ``openai`` client. Prints:

1. agreement: COMPLETE's greedy answers (``temperature 0``, 48 tokens) against llama.cpp's (``temperature 0``: the
   top logit, as COMPLETE's), for the merged GGUF and for the base GGUF with the adapter, and whether llama.cpp's
   rendering of the chat template and its tokens of that text equal COMPLETE's. Each disagreement is printed with
   both answers and its cause: llama.cpp's tokens decoded by COMPLETE's tokenizer either give COMPLETE's answer
   (the same tokens, their text decoded differently) or part from it at a token, where llama.cpp's margin between
   its two best tokens is printed (a near tie is float rounding, not another model);
2. rows/s and p50/p99 latency on the same prompts, torch and llama.cpp at ``--threads`` (2) threads each:
   llama.cpp one request at a time (one slot, one client) and llama.cpp batched (``--clients`` slots, as many
   concurrent clients, each sending its share one request after the other), against COMPLETE over a table of the
   prompts (one statement, its batching).

``--demo N`` runs issue 32's serving load instead, on the base model ``smollm2-135m`` (no training): the first N
prompts of the demo's question -> SQL pairs (as ``serve_throughput.py``), 32 new tokens, greedy, 32 clients.

Needs the optional extra ``llama`` (``pip install 'duckdb-ft[llama]'``: xllamacpp, a prebuilt CPU llama.cpp; no
compiler). Without it the script says so and exits 0, so it never fails a run. Run from the repository root:
``.venv/bin/python benchmarks/llama_cpp.py [--database DB --model NAME] [--demo N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

# This file is named llama_cpp.py: its own folder, first on sys.path when run, would shadow a package of that name.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

PROMPTS = [f"What is the code of item {i}?" for i in range(8)] + [
    "What is the capital of France?", "Name a colour.", "Say hello in Spanish.", "What is 2 + 2?",
    "Write a SQL query counting the rows of table orders.", "List three fruits.", "Who wrote Hamlet?",
    "What is the boiling point of water?", "Translate 'thank you' to French.", "Give me a synonym of happy.",
    "What day comes after Monday?", "Spell the word cat backwards.",
]
MAX_TOKENS = 48


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _train(d: str) -> tuple[str, str]:
    import duckdb_ft

    db = f"{d}/bench.duckdb"
    con = duckdb_ft.connect(db)
    con.execute("CREATE TABLE t AS SELECT 'What is the code of item ' || i || '?' AS p, "
                "'The code is ' || (i * 7) || '.' AS c FROM range(16) t(i)")
    job = con.execute("SELECT finetune('CREATE', 'bench', 'smollm2-135m', 'SELECT p AS prompt, c AS completion "
                      "FROM t', NULL, ?)", [json.dumps({"max_epochs": 1, "batch_size": 8, "learning_rate": 1e-3})]
                      ).fetchall()[0][0]
    print("training:", duckdb_ft.wait(con, job), flush=True)
    con.close()
    return db, "bench"


def _complete(db: str, model: str, prompts: list[str], max_tokens: int, fine_tuned: bool
              ) -> tuple[list[str], float, list[str], list[list[int]], object]:
    """COMPLETE over a table of ``prompts``: its answers, rows/s, the chat text and token ids it fed, and its
    tokenizer. Exports
    the GGUF files beside ``db``: ``base.gguf``, and for a fine-tuned model ``merged.gguf`` and ``adapter.gguf``."""
    import duckdb_ft
    from duckdb_ft.ml import models

    con = duckdb_ft.connect(db)
    opts = json.dumps({"max_tokens": max_tokens, "temperature": 0})
    con.execute("CREATE OR REPLACE TEMP TABLE bench_prompts (i INTEGER, p VARCHAR)")
    con.executemany("INSERT INTO bench_prompts VALUES (?, ?)", list(enumerate(prompts)))
    con.execute("SELECT complete(?, 'warm-up', ?)", [model, opts]).fetchall()
    t = time.perf_counter()
    rows = con.execute("SELECT i, complete(?, p, ?) FROM bench_prompts ORDER BY i", [model, opts]).fetchall()
    seconds = time.perf_counter() - t
    folder = os.path.dirname(db)
    base = model
    if fine_tuned:
        base = con.execute("SELECT base_model FROM duckdb_ft.models WHERE name = ?", [model]).fetchall()[0][0]
        duckdb_ft.export_model(con, model, f"{folder}/merged.gguf", format="gguf")
        duckdb_ft.export_model(con, model, f"{folder}/adapter.gguf", format="gguf-lora")
    duckdb_ft.export_model(con, base, f"{folder}/base.gguf", format="gguf")
    con.close()
    tokenizer = models.load_tokenizer(models.resolve(base))
    chats = [[{"role": "user", "content": p}] for p in prompts]
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    ids = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return [json.loads(r[1])["choices"][0]["messages"] for r in rows], len(rows) / seconds, texts, ids, tokenizer


def _serve(model_path: str, lora_path: str | None, slots: int, threads: int, n_ctx_seq: int = 1024):
    """llama-server (xllamacpp's ``Server``) on ``model_path`` [+ the LoRA adapter], ``slots`` parallel slots."""
    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = model_path
    p.n_parallel = slots
    p.n_ctx = n_ctx_seq * slots
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads
    p.n_threads_http = slots + 2
    p.verbosity = 0
    if lora_path:
        p.lora_adapters = [xlc.CommonAdapterLoraInfo(lora_path, 1.0)]
    return xlc.Server(p)


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=600))


def _ask(client, prompt: str, max_tokens: int):
    return client.chat.completions.create(model="gguf", messages=[{"role": "user", "content": prompt}],
                                          max_tokens=max_tokens, temperature=0)


def _pass(url: str, prompts: list[str], max_tokens: int, clients: int) -> tuple[float, list[float], list[str]]:
    """``clients`` threads, each with its own ``openai`` client, each asking its share of ``prompts`` one request
    after the other: the pass's rows/s, each request's latency, the answers (stripped, as COMPLETE's)."""
    from openai import OpenAI

    answers: list = [None] * len(prompts)
    latency: list = [None] * len(prompts)

    def work(indexes: list[int]) -> None:
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
        for i in indexes:
            t = time.perf_counter()
            answers[i] = (_ask(client, prompts[i], max_tokens).choices[0].message.content or "").strip()
            latency[i] = time.perf_counter() - t

    shares = [list(range(k, len(prompts), clients)) for k in range(clients)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, shares))
    return len(prompts) / (time.perf_counter() - t0), latency, answers


def _parting(url: str, tokenizer, text: str, ours: str, max_tokens: int) -> str:
    """Why llama.cpp's answer to the chat ``text`` differs from COMPLETE's (``ours``): its tokens (the server's
    native ``/completion``, the same text), decoded by COMPLETE's tokenizer, either give COMPLETE's answer (the
    same tokens, text decoded differently) or part from it at a token, where llama.cpp's margin between its two
    best tokens is given (the difference of their log-probabilities, which is that of their logits)."""
    r = _post(f"{url}/completion", {"prompt": text, "n_predict": max_tokens, "temperature": 0, "n_probs": 2,
                                    "return_tokens": True, "cache_prompt": False})
    toks, probs = r["tokens"], r.get("completion_probabilities") or []
    if tokenizer.decode(toks, skip_special_tokens=True).strip() == ours:
        return (f"the same {len(toks)} tokens as COMPLETE's; only their text differs (a character the last token "
                "leaves unfinished: COMPLETE decodes its bytes as U+FFFD, llama.cpp's server holds them back)")
    for k in range(len(toks)):
        part = tokenizer.decode(toks[:k + 1], skip_special_tokens=True).lstrip().rstrip("\ufffd")
        if not ours.startswith(part):
            top = probs[k]["top_logprobs"] if k < len(probs) else []
            margin = f"{top[0]['logprob'] - top[1]['logprob']:.4f}" if len(top) > 1 else "?"
            return f"parts at new token {k}; llama.cpp's margin there between its two best tokens: {margin}"
    return f"llama.cpp ends after {len(toks)} tokens where COMPLETE goes on"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database", help="a database holding --model (default: train one in a temporary folder)")
    p.add_argument("--model", help="the fine-tuned model to compare")
    p.add_argument("--demo", type=int, metavar="N", help="issue 32's load: N demo prompts on smollm2-135m, 32 tokens")
    p.add_argument("--threads", type=int, default=2, help="threads of torch (COMPLETE) and of llama.cpp (2)")
    p.add_argument("--clients", type=int, help="slots and concurrent clients of the batched pass (8; --demo: 32)")
    p.add_argument("--sequential-rows", type=int, help="rows of the one-at-a-time pass (default: all)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    if importlib.util.find_spec("xllamacpp") is None:
        print("benchmarks/llama_cpp.py: skipped: xllamacpp is not installed. Install the optional extra "
              "(pip install 'duckdb-ft[llama]': llama.cpp prebuilt for the CPU, no compiler) and run it again.")
        return 0
    import torch
    import xllamacpp

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    d = tempfile.mkdtemp(prefix="duckdb-ft-llama-")
    if args.demo:
        from duckdb_ft.demo import dataset

        train, test = dataset.make_pairs()
        prompts, max_tokens = [pair.prompt for pair in train + test][:args.demo], 32
        db, model, clients = f"{d}/bench.duckdb", "smollm2-135m", args.clients or 32
    else:
        prompts, max_tokens, clients = PROMPTS, MAX_TOKENS, args.clients or 8
        db, model = (args.database, args.model) if args.database else _train(d)
        if args.database:
            import shutil

            shutil.copyfile(args.database, f"{d}/bench.duckdb")  # exports go beside the copy
            db = f"{d}/bench.duckdb"
    print(f"xllamacpp {xllamacpp.__version__}; {len(prompts)} prompts, {max_tokens} new tokens, greedy; threads: "
          f"torch {torch.get_num_threads()}, llama.cpp {args.threads}; load average "
          f"{open('/proc/loadavg').read().strip()}", flush=True)
    ours, ours_rps, texts, hf_ids, tokenizer = _complete(db, model, prompts, max_tokens, not args.demo)
    print(f"COMPLETE over a table: {ours_rps:.2f} rows/s", flush=True)
    exports = [("base gguf", f"{d}/base.gguf", None)] if args.demo else [
        ("merged gguf", f"{d}/merged.gguf", None), ("base gguf + gguf-lora", f"{d}/base.gguf", f"{d}/adapter.gguf")]
    seq = prompts[:args.sequential_rows] if args.sequential_rows else prompts
    figures = {"complete_rows_per_s": ours_rps, "rows": len(prompts), "max_tokens": max_tokens,
               "threads": args.threads, "xllamacpp": xllamacpp.__version__, "passes": []}
    for name, path, lora in exports:
        for label, slots, rows in (("one request at a time", 1, seq), (f"{clients} slots, {clients} clients",
                                                                         clients, prompts)):
            server = _serve(path, lora, slots, args.threads)
            url = server.listening_address
            if slots == 1:
                rendered = [_post(f"{url}/apply-template", {"messages": [{"role": "user", "content": q}]})["prompt"]
                            for q in prompts]
                tokens = [_post(f"{url}/tokenize", {"content": t, "add_special": True, "parse_special": True})
                          ["tokens"] for t in rendered]
                print(f"{name}: llama.cpp's chat template text equals COMPLETE's on "
                      f"{sum(a == b for a, b in zip(rendered, texts))}/{len(prompts)}, its tokens of it on "
                      f"{sum(a == b for a, b in zip(tokens, hf_ids))}/{len(prompts)}")
            _pass(url, prompts[:1], max_tokens, 1)  # warm-up
            rps, latency, answers = _pass(url, rows, max_tokens, slots)
            agree = sum(a == b for a, b in zip(ours, answers))
            print(f"llama.cpp, {name}, {label}: {rps:.2f} rows/s, p50 {percentile(latency, 0.5):.2f} s, p99 "
                  f"{percentile(latency, 0.99):.2f} s; answers equal to COMPLETE's: {agree}/{len(rows)}", flush=True)
            for prompt, text, a, b in zip(rows, texts, ours, answers):
                if a != b:
                    print(f"  {prompt[-60:]!r}: {_parting(url, tokenizer, text, a, max_tokens)}\n    COMPLETE:  {a!r}\n"
                          f"    llama.cpp: {b!r}")
            figures["passes"].append({"export": name, "pass": label, "rows": len(rows), "rows_per_s": rps,
                                      "p50_s": percentile(latency, 0.5), "p99_s": percentile(latency, 0.99),
                                      "equal_to_complete": agree})
            del server
    figures["loadavg_after"] = open("/proc/loadavg").read().strip()
    print(f"COMPLETE over a table {ours_rps:.2f} rows/s; load average after: {figures['loadavg_after']}")
    for f in figures["passes"]:
        print(f"  llama.cpp, {f['export']}, {f['pass']}: {f['rows_per_s']:.2f} rows/s; COMPLETE / this "
              f"{ours_rps / f['rows_per_s']:.2f}x")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
