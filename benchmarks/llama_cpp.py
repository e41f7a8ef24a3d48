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
   prompts (one statement, its batching). ``--rounds R`` times COMPLETE and then every pass, R times (the passes in
   reverse order every other round, every server up throughout): rows/s are medians, and COMPLETE / llama.cpp is the
   median of the rounds' ratios, each taken minutes apart at most (a shared machine's load moves between passes).

``--demo N`` runs issue 32's serving load instead, on the base model ``smollm2-135m`` (no training): the first N
prompts of the demo's question -> SQL pairs (as ``serve_throughput.py``), 32 new tokens, greedy, 32 clients; with
the serve extra, ``duckdb-ft serve`` (torch at ``--threads``) takes the same load in the same rounds, side by side.

Needs the optional extra ``llama`` (``pip install 'duckdb-ft[llama]'``: xllamacpp, a prebuilt CPU llama.cpp; no
compiler). Without it the script says so and exits 0, so it never fails a run. Run from the repository root:
``.venv/bin/python benchmarks/llama_cpp.py [--database DB --model NAME] [--demo N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import machine  # benchmarks/machine.py

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


def _prepare(db: str, model: str, prompts: list[str], fine_tuned: bool) -> tuple[object, list[str], list[list[int]],
                                                                              object]:
    """A connection with the prompts as a table, COMPLETE's chat text and token ids of each, and its tokenizer.
    Exports the GGUF files beside ``db``: ``base.gguf``, and for a fine-tuned model ``merged.gguf`` and
    ``adapter.gguf``."""
    import duckdb_ft
    from duckdb_ft.ml import models

    con = duckdb_ft.connect(db)
    con.execute("CREATE OR REPLACE TEMP TABLE bench_prompts (i INTEGER, p VARCHAR)")
    con.executemany("INSERT INTO bench_prompts VALUES (?, ?)", list(enumerate(prompts)))
    folder, base = os.path.dirname(db), model
    if fine_tuned:
        base = con.execute("SELECT base_model FROM duckdb_ft.models WHERE name = ?", [model]).fetchall()[0][0]
        duckdb_ft.export_model(con, model, f"{folder}/merged.gguf", format="gguf")
        duckdb_ft.export_model(con, model, f"{folder}/adapter.gguf", format="gguf-lora")
    duckdb_ft.export_model(con, base, f"{folder}/base.gguf", format="gguf")
    tokenizer = models.load_tokenizer(models.resolve(base))
    chats = [[{"role": "user", "content": p}] for p in prompts]
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    ids = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return con, texts, ids, tokenizer


def _complete_pass(con, model: str, max_tokens: int) -> tuple[float, list[str]]:
    """One ``SELECT complete(...) FROM bench_prompts``: rows/s and the answers in prompt order."""
    opts = json.dumps({"max_tokens": max_tokens, "temperature": 0})
    t = time.perf_counter()
    rows = con.execute("SELECT i, complete(?, p, ?) FROM bench_prompts ORDER BY i", [model, opts]).fetchall()
    return len(rows) / (time.perf_counter() - t), [json.loads(r[1])["choices"][0]["messages"] for r in rows]


def _serve(model_path: str, lora_path: str | None, slots: int, threads: int, n_ctx_seq: int = 512):
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


def _duckdb_ft_serve(db: str, threads: int) -> tuple[subprocess.Popen, str, str]:
    """``duckdb-ft serve db`` as a subprocess on a free port (torch at ``threads`` threads): it, its URL, and an
    administrator's token."""
    import duckdb_ft
    from duckdb_ft.governance.credentials import first_token

    con = duckdb_ft.connect(db)
    token = first_token(con.duckdb_connection.cursor())[0]
    con.close()
    proc, url = machine.start_serve(db, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, wait_s=300)
    return proc, url, token


def _ask(client, model: str, prompt: str, max_tokens: int):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          max_tokens=max_tokens, temperature=0)


def _pass(url: str, model: str, key: str, prompts: list[str], max_tokens: int,
          clients: int) -> tuple[float, list[float], list[str]]:
    """``clients`` threads, each with its own ``openai`` client, each asking its share of ``prompts`` one request
    after the other: the pass's rows/s, each request's latency, the answers (stripped, as COMPLETE's)."""
    from openai import OpenAI

    answers: list = [None] * len(prompts)
    latency: list = [None] * len(prompts)

    def work(indexes: list[int]) -> None:
        client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=3600)
        for i in indexes:
            t = time.perf_counter()
            answers[i] = (_ask(client, model, prompts[i], max_tokens).choices[0].message.content or "").strip()
            latency[i] = time.perf_counter() - t

    shares = [list(range(k, len(prompts), clients)) for k in range(clients)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, shares))
    return len(prompts) / (time.perf_counter() - t0), latency, answers


def _parting(url: str, tokenizer, text: str, ours: str, theirs: str, max_tokens: int) -> str:
    """Why llama.cpp's answer ``theirs`` to the chat ``text`` differs from COMPLETE's ``ours``. llama.cpp answers
    the text again alone (its native ``/completion``, no cached prefix), with its two best tokens' log-probabilities
    at each step (their difference is that of their logits); its tokens, decoded by COMPLETE's tokenizer, either
    give COMPLETE's answer or part from it at a token, and the margin there says how near a tie it was."""
    r = _post(f"{url}/completion", {"prompt": text, "n_predict": max_tokens, "temperature": 0, "n_probs": 2,
                                    "return_tokens": True, "cache_prompt": False})
    toks, probs, alone = r["tokens"], r.get("completion_probabilities") or [], r["content"].strip()

    def parts(target: str) -> str:
        for k in range(len(toks)):
            piece = tokenizer.decode(toks[:k + 1], skip_special_tokens=True).lstrip().rstrip("\ufffd")
            if not target.startswith(piece):
                top = probs[k]["top_logprobs"] if k < len(probs) else []
                margin = f"{top[0]['logprob'] - top[1]['logprob']:.4f}" if len(top) > 1 else "?"
                return f"at new token {k}, where llama.cpp's two best tokens are {margin} apart"
        return f"after its {len(toks)} tokens"

    decoded = tokenizer.decode(toks, skip_special_tokens=True).strip()
    if decoded == ours:
        if decoded.rstrip("\ufffd").rstrip() == theirs.rstrip("\ufffd").rstrip():
            return (f"the same {len(toks)} tokens as COMPLETE's, decoded differently (a character the last token "
                    "leaves unfinished: COMPLETE shows its bytes as U+FFFD, llama.cpp's server holds them back)")
        return ("llama.cpp alone (no cached prefix) gives COMPLETE's answer token for token; its answer in the pass "
                f"(its prompt cache, its batch) parts from that {parts(theirs)}")
    again = "" if alone == theirs else " (llama.cpp alone answers otherwise than in the pass, too)"
    return f"llama.cpp's tokens part from COMPLETE's answer {parts(ours)}{again}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database", help="a database holding --model (default: train one in a temporary folder)")
    p.add_argument("--model", help="the fine-tuned model to compare")
    p.add_argument("--demo", type=int, metavar="N", help="issue 32's load: N demo prompts on smollm2-135m, 32 tokens")
    p.add_argument("--threads", type=int, default=2, help="threads of torch (COMPLETE) and of llama.cpp (2)")
    p.add_argument("--clients", type=int, help="slots and concurrent clients of the batched pass (8; --demo: 32)")
    p.add_argument("--sequential-rows", type=int, help="rows of the one-at-a-time pass (default: all)")
    p.add_argument("--rounds", type=int, default=1, help="rounds, each timing COMPLETE and every pass (1)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    if importlib.util.find_spec("xllamacpp") is None:
        print("benchmarks/llama_cpp.py: skipped: xllamacpp is not installed. Install the optional extra "
              "(pip install 'duckdb-ft[llama]': llama.cpp prebuilt for the CPU, no compiler) and run it again.")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    d = tempfile.mkdtemp(prefix="duckdb-ft-llama-")
    try:
        return _run(args, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)  # the database and the GGUF files (about 1 GB)


def _run(args: argparse.Namespace, d: str) -> int:
    import torch
    import xllamacpp

    torch.set_num_threads(args.threads)
    if args.demo:
        from duckdb_ft.demo import dataset

        train, test = dataset.make_pairs()
        prompts, max_tokens = [pair.prompt for pair in train + test][:args.demo], 32
        db, model, clients = f"{d}/bench.duckdb", "smollm2-135m", args.clients or 32
    else:
        prompts, max_tokens, clients = PROMPTS, MAX_TOKENS, args.clients or 8
        db, model = (args.database, args.model) if args.database else _train(d)
        if args.database:
            shutil.copyfile(args.database, f"{d}/bench.duckdb")  # exports go beside the copy
            db = f"{d}/bench.duckdb"
    print(f"xllamacpp {xllamacpp.__version__}; {len(prompts)} prompts, {max_tokens} new tokens, greedy; threads: "
          f"torch {torch.get_num_threads()}, llama.cpp {args.threads}; load average "
          f"{open('/proc/loadavg').read().strip()}", flush=True)
    con, texts, hf_ids, tokenizer = _prepare(db, model, prompts, not args.demo)
    con.execute("SELECT complete(?, 'warm-up', ?)", [model, json.dumps({"max_tokens": max_tokens})]).fetchall()
    exports = [("base gguf", f"{d}/base.gguf", None)] if args.demo else [
        ("merged gguf", f"{d}/merged.gguf", None), ("base gguf + gguf-lora", f"{d}/base.gguf", f"{d}/adapter.gguf")]
    seq = prompts[:args.sequential_rows] if args.sequential_rows else prompts
    passes = []  # every server stays up for all rounds: each round times COMPLETE and every pass close together
    for name, path, lora in exports:
        for label, slots, rows in (("one request at a time", 1, seq),
                                   (f"{clients} slots, {clients} clients", clients, prompts)):
            server = _serve(path, lora, slots, args.threads)
            url = server.listening_address
            if slots == 1:
                rendered = [_post(f"{url}/apply-template", {"messages": [{"role": "user", "content": q}]})["prompt"]
                            for q in prompts]
                tokens = [_post(f"{url}/tokenize", {"content": t, "add_special": True, "parse_special": True})
                          ["tokens"] for t in rendered]
                print(f"{name}: llama.cpp's chat template text equals COMPLETE's on "
                      f"{sum(a == b for a, b in zip(rendered, texts))}/{len(prompts)}, its tokens of it on "
                      f"{sum(a == b for a, b in zip(tokens, hf_ids))}/{len(prompts)}", flush=True)
            _pass(url, "gguf", "none", prompts[:1], max_tokens, 1)  # warm-up
            passes.append({"name": f"llama.cpp {name}, {label}", "rows": rows, "clients": slots, "keep": server,
                           "url": url, "model": "gguf", "key": "none", "llama": True})
    if args.demo and importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn"):
        proc, url, token = _duckdb_ft_serve(f"{d}/serve.duckdb", args.threads)
        _pass(url, model, token, prompts[:1], max_tokens, 1)  # the server loads the model
        for label, n, rows in (("one request at a time", 1, seq), (f"{clients} clients", clients, prompts)):
            passes.append({"name": f"duckdb-ft serve, {label}", "rows": rows, "clients": n, "keep": proc, "url": url,
                           "model": model, "key": token, "llama": False})
    elif args.demo:
        print("duckdb-ft serve is left out: it needs the serve extra (pip install 'duckdb-ft[serve]')")
    for ps in passes:
        ps.update(rps=[], ratio=[], latency=[], answers=None)
    ours, complete_rps = None, []
    for r in range(args.rounds):
        order = passes if r % 2 == 0 else passes[::-1]  # COMPLETE first, then the passes; every other round reversed
        rps, answers = _complete_pass(con, model, max_tokens)
        complete_rps.append(rps)
        if ours is None:
            ours = answers
        elif answers != ours:
            print(f"round {r + 1}: COMPLETE's answers changed between rounds")
        line = [f"COMPLETE {rps:.2f}"]
        for ps in order:
            rps_p, latency, answers = _pass(ps["url"], ps["model"], ps["key"], ps["rows"], max_tokens, ps["clients"])
            ps["rps"].append(rps_p)
            ps["ratio"].append(rps / rps_p)
            ps["latency"] += latency
            ps["answers"] = ps["answers"] or answers
            line.append(f"{ps['name']} {rps_p:.2f}")
        print(f"round {r + 1} rows/s (load average {open('/proc/loadavg').read().strip()}): " + "; ".join(line),
              flush=True)
    for ps in passes:
        agree = sum(a == b for a, b in zip(ours, ps["answers"]))
        ps["equal"] = agree
        print(f"agreement, COMPLETE vs {ps['name']}: {agree}/{len(ps['rows'])}")
        for prompt, text, a, b in zip(ps["rows"], texts, ours, ps["answers"]):
            if a != b:
                why = _parting(ps["url"], tokenizer, text, a, b, max_tokens) if ps["llama"] else "differs"
                print(f"  {prompt[-60:]!r}: {why}\n    COMPLETE:  {a!r}\n    this:      {b!r}")
    median = statistics.median
    figures = {"rows": len(prompts), "max_tokens": max_tokens, "threads": args.threads, "rounds": args.rounds,
               "xllamacpp": xllamacpp.__version__, "complete_rows_per_s": complete_rps, "passes": [],
               "loadavg_after": open("/proc/loadavg").read().strip()}
    print(f"rows/s, median of {args.rounds} round(s) (load average after: {figures['loadavg_after']}):\n"
          f"  COMPLETE over a table: {median(complete_rps):.2f}")
    for ps in passes:
        p50, p99 = percentile(ps["latency"], 0.5), percentile(ps["latency"], 0.99)
        print(f"  {ps['name']}: {median(ps['rps']):.2f} (p50 {p50:.2f} s, p99 {p99:.2f} s);"
              f" COMPLETE / this, median of the rounds' ratios: {median(ps['ratio']):.2f}x")
        figures["passes"].append({"pass": ps["name"], "rows": len(ps["rows"]),
                                  "rows_per_s": ps["rps"], "complete_over_this": ps["ratio"], "p50_s": p50,
                                  "p99_s": p99, "equal_to_complete": ps["equal"]})
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    con.close()
    for ps in passes:
        if isinstance(ps["keep"], subprocess.Popen) and ps["keep"].poll() is None:
            ps["keep"].terminate()
            ps["keep"].wait(timeout=60)
        ps["keep"] = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
