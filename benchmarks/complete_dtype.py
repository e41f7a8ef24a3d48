"""COMPLETE's ``dtype`` option: bfloat16 against float32 (the reference) on the default model, same prompts.

One process, one loaded copy of ``smollm2-135m``, greedy, ``max_tokens`` 32 (``--max-tokens``). Two prompt sets
from ``complete_throughput.py``: ``--rows`` (64) short unique questions (its workload (a)) and ``--template-rows``
(64) template prompts sharing a schema prefix (its workload (b)'s kind of rows). Each set runs
``SELECT complete('smollm2-135m', prompt, '{"max_tokens": 32, "dtype": ...}') FROM t`` once per dtype, interleaved
for ``--repeat`` rounds (each keeps its fastest pass). It prints rows/s per dtype, the ratio, and how many
bfloat16 answers equal the float32 answer exactly, plus how many agree on the first 8 words. Run from the
repository root::

    DUCKDB_FT_CACHE=.pytest_cache/model-cache .venv/bin/python benchmarks/complete_dtype.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import duckdb_ft  # noqa: E402
from complete_throughput import MODEL, make_prompts, make_template_prompts  # noqa: E402


def run(con: Any, table: str, dtype: str, max_tokens: int) -> tuple[float, list[str]]:
    opts = json.dumps({"max_tokens": max_tokens, "dtype": dtype})
    t0 = time.perf_counter()
    rows = con.execute(f"SELECT id, complete('{MODEL}', prompt, ?) FROM {table} ORDER BY id", [opts]).fetchall()
    return time.perf_counter() - t0, [json.loads(out)["choices"][0]["messages"] for _, out in rows]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--template-rows", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    con = duckdb_ft.connect()
    con.execute(f"SELECT complete('{MODEL}', 'Hello', '{{\"max_tokens\": 4, \"dtype\": \"bfloat16\"}}')").fetchall()
    sets = {"short": make_prompts(args.rows), "template": make_template_prompts(args.template_rows)}
    report: dict[str, Any] = {"model": MODEL, "max_tokens": args.max_tokens, "torch_threads": torch.get_num_threads(),
                              "load_average": os.getloadavg(), "sets": {}}
    for name, prompts in sets.items():
        con.execute(f"CREATE OR REPLACE TABLE t_{name} (id INTEGER, prompt VARCHAR)")
        con.executemany(f"INSERT INTO t_{name} VALUES (?, ?)", list(enumerate(prompts)))
        best: dict[str, float] = {}
        outs: dict[str, list[str]] = {}
        for _ in range(args.repeat):
            for dtype in ("float32", "bfloat16"):
                s, outs[dtype] = run(con, f"t_{name}", dtype, args.max_tokens)
                best[dtype] = min(s, best.get(dtype, s))
                print(f"  ({name}) {dtype:<9} {s:7.2f} s  {len(prompts) / s:6.2f} rows/s", flush=True)
        equal = sum(a == b for a, b in zip(outs["float32"], outs["bfloat16"]))
        head = sum(a.split()[:8] == b.split()[:8] for a, b in zip(outs["float32"], outs["bfloat16"]))
        ratio = best["float32"] / best["bfloat16"]
        print(f"({name}) {len(prompts)} rows: bfloat16 / float32 rows/s {ratio:.2f}x; equal answers "
              f"{equal}/{len(prompts)}; same first 8 words {head}/{len(prompts)}", flush=True)
        differ = [(p[-60:], a, b) for p, a, b in zip(prompts, outs["float32"], outs["bfloat16"]) if a != b][:2]
        for p, a, b in differ:
            print(f"  differs: ...{p!r}\n    float32:  {a!r}\n    bfloat16: {b!r}")
        report["sets"][name] = {"rows": len(prompts), "seconds": best, "ratio": round(ratio, 3), "equal": equal,
                                "same_first_8_words": head}
    report["load_average_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
