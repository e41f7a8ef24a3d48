"""The decode loop across requests (``duckdb_ft/ml/batcher.py``): concurrent submitters against one request at a
time and against one ``SELECT complete(...)`` over the same rows, in one process on one loaded model.

The workload: the first 256 prompts of the demo's question -> SQL pairs (``duckdb_ft/demo/dataset.py``: the shop's
schema, then a question; ``--rows``), greedy, ``max_tokens`` 32 (``--max-tokens``), on ``smollm2-135m``. Passes:

1. **COMPLETE over a table**: ``SELECT complete('smollm2-135m', prompt, '{"max_tokens": 32}') FROM prompts``
   (every row's latency is the whole statement's).
2. **sequential**: one ``Batcher.submit(...).result()`` after the other (``--sequential-rows``, default all).
3. **concurrent**: ``--clients`` (32) threads, each submitting its share of the prompts (8 each for 256) one after
   the other, waiting for each answer, through a Batcher of ``--slots`` slots (several values: one pass each).

Each pass reports rows/s (rows over the pass's wall time) and the p50 and p99 of request latency (submit to
result), and the share of answers equal to COMPLETE's (greedy: they should all be). The model is loaded and warmed
up before anything is timed; each Batcher pass starts with a fresh Batcher (an empty prefix store). The HTTP
server's own benchmark is ``benchmarks/serve_throughput.py``.

Run from the repository root (``DUCKDB_FT_CACHE=.pytest_cache/model-cache`` reuses the test suite's converted
model)::

    .venv/bin/python benchmarks/batcher_throughput.py                          # 256 rows, 32 clients, 16 slots
    .venv/bin/python benchmarks/batcher_throughput.py --slots 16,32 --sequential-rows 64 --json /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from datetime import datetime, timezone

import duckdb_ft
from duckdb_ft.demo import dataset
from duckdb_ft.ml import batcher as batching, complete as completion, models
from duckdb_ft.options import CompleteOptions

MODEL = "smollm2-135m"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(name: str, rows: int, wall: float, latencies: list[float], answers: list[str],
            reference: list[str]) -> dict:
    same = sum(a == r for a, r in zip(answers, reference))
    out = {"pass": name, "rows": rows, "seconds": round(wall, 2), "rows_per_s": round(rows / wall, 2),
           "p50_s": round(percentile(latencies, 0.5), 2), "p99_s": round(percentile(latencies, 0.99), 2),
           "equal_to_complete": f"{same}/{len(answers)}"}
    print(json.dumps(out), flush=True)
    return out


def request(prompt: str, max_tokens: int) -> completion.Request:
    return completion.Request([{"role": "user", "content": prompt}], CompleteOptions(max_tokens=max_tokens))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--slots", default="16", help="comma-separated: one concurrent pass per value")
    ap.add_argument("--sequential-rows", type=int, default=None, help="rows of the sequential pass (default: all)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    train, test = dataset.make_pairs()
    prompts = [p.prompt for p in (train + test)][:args.rows]
    started = time.perf_counter()
    loaded = models.load(MODEL)
    print(f"model loaded in {time.perf_counter() - started:.1f} s", flush=True)
    options = json.dumps({"max_tokens": args.max_tokens})

    con = duckdb_ft.connect()
    con.execute("CREATE TABLE prompts AS SELECT unnest(?) AS prompt", [prompts])
    con.execute("SELECT complete(?, 'warm up', ?)", [MODEL, options]).fetchall()
    t = time.perf_counter()
    out = con.execute("SELECT complete(?, prompt, ?) FROM prompts", [MODEL, options]).fetchall()
    wall = time.perf_counter() - t
    reference = [json.loads(o)["choices"][0]["messages"] for (o,) in out]
    results = [summary("COMPLETE over a table", len(prompts), wall, [wall], reference, reference)]
    con.close()

    b = batching.Batcher(loaded)
    b.submit(request("warm up", 4), None).result()
    n = args.sequential_rows or len(prompts)
    answers, latencies = [], []
    t = time.perf_counter()
    for p in prompts[:n]:
        s = time.perf_counter()
        answers.append(b.submit(request(p, args.max_tokens), None).result().text)
        latencies.append(time.perf_counter() - s)
    results.append(summary("sequential", n, time.perf_counter() - t, latencies, answers, reference[:n]))
    b.close()

    for slots in [int(x) for x in args.slots.split(",")]:
        b = batching.Batcher(loaded, slots=slots)
        answers = [""] * len(prompts)
        latencies = [0.0] * len(prompts)
        share = [list(range(c, len(prompts), args.clients)) for c in range(args.clients)]

        def client(rows: list[int]) -> None:
            for i in rows:
                s = time.perf_counter()
                answers[i] = b.submit(request(prompts[i], args.max_tokens), None).result().text
                latencies[i] = time.perf_counter() - s

        threads = [threading.Thread(target=client, args=(rows,)) for rows in share]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        stats = b.stats()
        b.close()
        results.append(summary(f"concurrent, {args.clients} clients, {slots} slots", len(prompts), wall, latencies,
                               answers, reference))
        print(f"  steps {stats['steps']}, tokens {stats['tokens']} ({stats['tokens'] / stats['steps']:.1f} rows a "
              f"step), prompt tokens computed {stats['prefill_tokens']} of {stats['prompt_tokens']}", flush=True)

    seq = results[1]["rows_per_s"]
    for r in results[2:]:
        print(f"{r['pass']}: {r['rows_per_s'] / seq:.1f}x sequential, "
              f"{r['rows_per_s'] / results[0]['rows_per_s']:.2f}x COMPLETE over a table")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
                       "cpus": os.cpu_count(), "torch_threads": __import__("torch").get_num_threads(),
                       "args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
