"""duckdb-ft against llama.cpp (issue 37): the same fine-tuned model, the same 20 prompts and chat template.

Trains SmolLM2-135M for one short epoch (or takes ``--database DB --model NAME``), exports it ``gguf`` (merged),
``gguf-lora`` (the adapter alone) and the base model ``gguf``, then:

1. agreement: COMPLETE's greedy answers (``temperature 0``, 48 tokens) against llama.cpp's (llama-cpp-python's
   ``create_chat_completion``, ``temperature 0``, the chat template stored in the GGUF), for the merged GGUF and
   for the base GGUF with the adapter (``lora_path``); each disagreement printed with both answers;
2. rows/s on the 20 prompts: llama.cpp one request at a time (merged, and base + adapter), and COMPLETE over a
   table of the same prompts (one statement, its batching); with ``--server PATH`` (a ``llama-server`` binary),
   also llama.cpp's own batching: ``--parallel 8`` slots under 8 concurrent clients.

Needs the optional extra ``llama`` (``pip install 'duckdb-ft[llama]'``: llama-cpp-python, which compiles llama.cpp:
about 36 minutes on a loaded 2-core machine). Without it the script says so and exits 0, so it never fails a run.
Run: ``.venv/bin/python benchmarks/llama_cpp.py [--database DB --model NAME] [--server PATH]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

# This file is named llama_cpp.py: its own folder, first on sys.path when run, would shadow the package.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

PROMPTS = [f"What is the code of item {i}?" for i in range(8)] + [
    "What is the capital of France?", "Name a colour.", "Say hello in Spanish.", "What is 2 + 2?",
    "Write a SQL query counting the rows of table orders.", "List three fruits.", "Who wrote Hamlet?",
    "What is the boiling point of water?", "Translate 'thank you' to French.", "Give me a synonym of happy.",
    "What day comes after Monday?", "Spell the word cat backwards.",
]
MAX_TOKENS = 48


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


def _complete(db: str, model: str) -> tuple[list[str], float]:
    import duckdb_ft

    con = duckdb_ft.connect(db)
    opts = json.dumps({"max_tokens": MAX_TOKENS, "temperature": 0})
    con.execute("CREATE OR REPLACE TEMP TABLE bench_prompts (i INTEGER, p VARCHAR)")
    con.executemany("INSERT INTO bench_prompts VALUES (?, ?)", list(enumerate(PROMPTS)))
    con.execute("SELECT complete(?, 'warm-up', ?)", [model, opts]).fetchall()
    t = time.perf_counter()
    rows = con.execute("SELECT i, complete(?, p, ?) FROM bench_prompts ORDER BY i", [model, opts]).fetchall()
    seconds = time.perf_counter() - t
    base = con.execute("SELECT base_model FROM duckdb_ft.models WHERE name = ?", [model]).fetchall()[0][0]
    for fmt, path in (("gguf", f"{os.path.dirname(db)}/merged.gguf"), ("gguf-lora", f"{os.path.dirname(db)}/adapter.gguf")):
        duckdb_ft.export_model(con, model, path, format=fmt)
    duckdb_ft.export_model(con, base, f"{os.path.dirname(db)}/base.gguf", format="gguf")
    con.close()
    return [json.loads(r[1])["choices"][0]["messages"] for r in rows], len(rows) / seconds


def _llama(model_path: str, lora_path: str | None = None) -> tuple[list[str], float]:
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, lora_path=lora_path, n_ctx=2048, n_threads=os.cpu_count(), verbose=False,
                seed=0)
    chat = lambda p: llm.create_chat_completion([{"role": "user", "content": p}], temperature=0.0,  # noqa: E731
                                                max_tokens=MAX_TOKENS)["choices"][0]["message"]["content"].strip()
    chat("warm-up")
    t = time.perf_counter()
    answers = [chat(p) for p in PROMPTS]
    return answers, len(PROMPTS) / (time.perf_counter() - t)


def _server_rows_per_s(binary: str, model_path: str, slots: int = 8) -> float:
    """llama-server with ``slots`` parallel slots (its continuous batching) under ``slots`` concurrent clients."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "-m", model_path, "--port", str(port), "--parallel", str(slots), "-c",
                             str(2048 * slots), "--temp", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)

        def ask(p: str) -> str:
            body = json.dumps({"messages": [{"role": "user", "content": p}], "temperature": 0,
                               "max_tokens": MAX_TOKENS}).encode()
            req = urllib.request.Request(f"{url}/v1/chat/completions", body, {"Content-Type": "application/json"})
            return json.load(urllib.request.urlopen(req, timeout=600))["choices"][0]["message"]["content"]

        ask("warm-up")
        t = time.perf_counter()
        with ThreadPoolExecutor(slots) as pool:
            list(pool.map(ask, PROMPTS))
        return len(PROMPTS) / (time.perf_counter() - t)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database", help="a database holding --model (default: train one in a temporary folder)")
    p.add_argument("--model", help="the fine-tuned model to compare")
    p.add_argument("--server", help="a llama-server binary: also measure llama.cpp's parallel slots")
    args = p.parse_args()
    if importlib.util.find_spec("llama_cpp") is None:
        print("benchmarks/llama_cpp.py: skipped: llama-cpp-python is not installed. Install the optional extra "
              "(pip install 'duckdb-ft[llama]'; it compiles llama.cpp, about 36 minutes on a 2-core machine) and "
              "run it again.")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    d = tempfile.mkdtemp(prefix="duckdb-ft-llama-")
    db, model = (args.database, args.model) if args.database else _train(d)
    if args.database:
        import shutil

        shutil.copyfile(args.database, f"{d}/bench.duckdb")  # exports go beside the copy
        db = f"{d}/bench.duckdb"
    ours, ours_rps = _complete(db, model)
    merged, merged_rps = _llama(f"{d}/merged.gguf")
    adapted, adapted_rps = _llama(f"{d}/base.gguf", f"{d}/adapter.gguf")
    for name, theirs in (("merged gguf", merged), ("base gguf + gguf-lora", adapted)):
        same = sum(a == b for a, b in zip(ours, theirs))
        print(f"agreement, COMPLETE vs llama.cpp ({name}): {same}/{len(PROMPTS)}")
        for prompt, a, b in zip(PROMPTS, ours, theirs):
            if a != b:
                print(f"  {prompt!r}\n    COMPLETE:  {a!r}\n    llama.cpp: {b!r}")
    print(f"rows/s: COMPLETE over a table {ours_rps:.2f}; llama.cpp one at a time: merged {merged_rps:.2f}, "
          f"base + adapter {adapted_rps:.2f}")
    if args.server:
        print(f"rows/s: llama-server, 8 parallel slots, 8 clients: {_server_rows_per_s(args.server, f'{d}/merged.gguf'):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
