"""``duckdb-ft serve`` throughput: the demo's prompts through the real ``openai`` client, concurrent and one at a
time, against one ``SELECT complete(...)`` over the same rows.

The workload: the first 256 prompts of the demo's question -> SQL pairs (``duckdb_ft/demo/dataset.py``: the shop's
schema, then a question; ``--rows``), greedy, ``max_tokens`` 32 (``--max-tokens``), on ``smollm2-135m``
(``--model``). Three passes on one database file:

1. **COMPLETE over a table**, in-process, before the server starts: ``SELECT complete(model, prompt, options)
   FROM prompts`` (the model loaded and warmed up first).
2. **sequential**: the server started (``duckdb-ft serve`` as a subprocess on a free port, the administrator's
   token), one client sends the prompts one request at a time (the first ``--sequential-rows`` of them: default
   all; rows/s are the subset's own).
3. **concurrent**: ``--clients`` (32) threads, each with its own ``openai`` client, each sending its share of the
   prompts (8 each for 256) one after the other.

Each pass reports rows/s (rows over the pass's wall time) and the p50 and p99 of request latency (COMPLETE over a
table: every row's latency is the statement's); answers are compared with COMPLETE's (greedy: equal). The server
is warmed up (the model loaded by one request) before anything is timed. The load average (1 minute) is read at the
start and end of each pass. On a shared machine wall time measures the neighbours too, so each pass also reports
the CPU seconds it cost (this process's for COMPLETE, the server's for the HTTP passes; psutil) and rows per CPU
second: the work per row, which the load moves far less.

Run from the repository root (``DUCKDB_FT_CACHE=.pytest_cache/model-cache`` reuses the test suite's converted
model)::

    .venv/bin/python benchmarks/serve_throughput.py                 # 256 rows, 32 clients
    .venv/bin/python benchmarks/serve_throughput.py --rows 64 --clients 16 --json /tmp/serve.json
    .venv/bin/python benchmarks/serve_throughput.py --sequential-rows 64          # one-at-a-time on a subset
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
from openai import OpenAI

import duckdb_ft
from duckdb_ft.demo import dataset
from duckdb_ft.governance.credentials import first_token

import machine  # benchmarks/machine.py


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def http_pass(url: str, token: str, model: str, prompts: list[str], max_tokens: int,
              clients: int) -> tuple[float, list[float], list[str]]:
    """(seconds, latencies, answers in prompt order) of ``prompts`` sent by ``clients`` threads."""
    answers: list[str] = [""] * len(prompts)
    latencies: list[float] = []
    lock = threading.Lock()
    shares = [list(range(i, len(prompts), clients)) for i in range(clients)]

    def work(indexes: list[int]) -> None:
        client = OpenAI(base_url=url + "/v1", api_key=token, max_retries=0, timeout=3600)
        for i in indexes:
            t0 = time.perf_counter()
            r = client.completions.create(model=model, prompt=prompts[i], max_tokens=max_tokens, temperature=0)
            with lock:
                latencies.append(time.perf_counter() - t0)
            answers[i] = r.choices[0].text

    threads = [threading.Thread(target=work, args=(share,)) for share in shares]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, answers


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--sequential-rows", type=int, default=None, help="the sequential pass on the first N rows")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    train, test = dataset.make_pairs()
    prompts = [pair.prompt for pair in (train + test)][:args.rows]
    folder = tempfile.mkdtemp(prefix="serve-bench-")
    db = os.path.join(folder, "bench.duckdb")
    options = json.dumps({"max_tokens": args.max_tokens, "temperature": 0})
    con = duckdb_ft.connect(db)
    con.execute("CREATE TABLE prompts AS SELECT * FROM (SELECT unnest(?) AS prompt, generate_subscripts(?, 1) AS i)",
                [prompts, prompts])
    con.execute("SELECT complete(?, 'Hello', ?)", [args.model, options]).fetchall()  # load and warm up
    loads = {"complete": [os.getloadavg()[0]]}
    c0 = time.process_time()
    t0 = time.perf_counter()
    table = con.execute("SELECT i, complete(?, prompt, ?) FROM prompts ORDER BY i", [args.model, options]).fetchall()
    complete_s = time.perf_counter() - t0
    complete_cpu = time.process_time() - c0
    loads["complete"].append(os.getloadavg()[0])
    print(f"COMPLETE over the table: {len(prompts) / complete_s:.2f} rows/s", flush=True)
    expected = [json.loads(r[1])["choices"][0]["messages"] for r in table]
    token = first_token(con.duckdb_connection.cursor())[0]
    con.close()

    proc, url = machine.start_serve(db)
    server = psutil.Process(proc.pid)

    def server_cpu() -> float:
        t = server.cpu_times()
        return t.user + t.system

    try:
        http_pass(url, token, args.model, ["Hello"], args.max_tokens, 1)  # the server loads the model
        seq_prompts = prompts[:args.sequential_rows or len(prompts)]
        loads["sequential"] = [os.getloadavg()[0]]
        c0 = server_cpu()
        seq_s, seq_lat, seq_answers = http_pass(url, token, args.model, seq_prompts, args.max_tokens, 1)
        seq_cpu = server_cpu() - c0
        loads["sequential"].append(os.getloadavg()[0])
        print(f"sequential: {len(seq_prompts) / seq_s:.2f} rows/s", flush=True)
        loads["concurrent"] = [os.getloadavg()[0]]
        c0 = server_cpu()
        con_s, con_lat, con_answers = http_pass(url, token, args.model, prompts, args.max_tokens, args.clients)
        con_cpu = server_cpu() - c0
        loads["concurrent"].append(os.getloadavg()[0])
        print(f"concurrent: {len(prompts) / con_s:.2f} rows/s", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        shutil.rmtree(folder, ignore_errors=True)
    n, n_seq = len(prompts), len(seq_prompts)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    figures = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "cpu": cpu, "cores": os.cpu_count(),
        "load_average_start_end": loads, "model": args.model, "rows": n, "sequential_rows": n_seq,
        "clients": args.clients, "max_tokens": args.max_tokens,
        "complete_rows_per_s": n / complete_s, "complete_p50_s": complete_s, "complete_p99_s": complete_s,
        "complete_rows_per_cpu_s": n / complete_cpu, "sequential_rows_per_cpu_s": n_seq / seq_cpu,
        "concurrent_rows_per_cpu_s": n / con_cpu,
        "sequential_rows_per_s": n_seq / seq_s, "sequential_p50_s": percentile(seq_lat, 0.5),
        "sequential_p99_s": percentile(seq_lat, 0.99),
        "concurrent_rows_per_s": n / con_s, "concurrent_p50_s": percentile(con_lat, 0.5),
        "concurrent_p99_s": percentile(con_lat, 0.99),
        "sequential_equal_complete": sum(a == b for a, b in zip(seq_answers, expected)) / n_seq,
        "concurrent_equal_complete": sum(a == b for a, b in zip(con_answers, expected)) / n,
    }
    figures["concurrent_vs_sequential"] = figures["concurrent_rows_per_s"] / figures["sequential_rows_per_s"]
    figures["concurrent_vs_complete"] = figures["concurrent_rows_per_s"] / figures["complete_rows_per_s"]
    figures["concurrent_vs_complete_per_cpu_s"] = complete_cpu / con_cpu
    for k, v in figures.items():
        print(f"{k:28} {v:.3f}" if isinstance(v, float) else f"{k:28} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
