"""COMPLETE's greedy decoding, A/B in one process: continuous batching (``duckdb_ft/ml/decode.py``) against
``model.generate`` per batch (``LoadedModel.continuous = False``), on the first ``--rows`` rows of
``complete_throughput.py``'s workload (b) (template prompts, a quarter duplicates), through SQL.

Each round runs both, interleaved; the fastest of each is compared, and the two outputs row by row. With
``--mixed-max-tokens`` even rows ask for 8 new tokens and odd rows for 32 (``model.generate`` then runs one batch
per ``max_tokens``; continuous batching runs them together).

    DUCKDB_FT_CACHE=.pytest_cache/model-cache .venv/bin/python benchmarks/complete_decode_ab.py --rows 128
    DUCKDB_FT_CACHE=.pytest_cache/model-cache .venv/bin/python benchmarks/complete_decode_ab.py --rows 128 \\
        --mixed-max-tokens
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import complete_throughput as ct  # noqa: E402
import duckdb_ft  # noqa: E402
from duckdb_ft.ml import models  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mixed-max-tokens", action="store_true")
    args = ap.parse_args()
    loaded = models.load(ct.MODEL)
    prompts = ct.make_template_prompts(256)[:args.rows]
    con = duckdb_ft.connect()
    con.execute("CREATE TABLE tmpl (id INTEGER, prompt VARCHAR)")
    con.executemany("INSERT INTO tmpl VALUES (?, ?)", list(enumerate(prompts)))
    con.execute(f"SELECT complete('{ct.MODEL}', 'Hello', '{{\"max_tokens\": 4}}')").fetchall()
    opts = ("CASE WHEN id % 2 = 0 THEN '{\"max_tokens\": 8}' ELSE '{\"max_tokens\": 32}' END"
            if args.mixed_max_tokens else "'{\"max_tokens\": 32}'")
    sql = f"SELECT id, complete('{ct.MODEL}', prompt, {opts}) FROM tmpl ORDER BY id"
    print(f"{args.rows} rows, {len(set(prompts))} distinct, torch threads {torch.get_num_threads()}, max_tokens "
          f"{'8/32' if args.mixed_max_tokens else 32}", flush=True)
    best: dict[bool, float] = {}
    outs: dict[bool, list[str]] = {}
    for rnd in range(1, args.rounds + 1):
        for cont in (True, False):
            loaded.continuous = cont
            t0 = time.perf_counter()
            rows = [json.loads(o) for _, o in con.execute(sql).fetchall()]
            s = time.perf_counter() - t0
            best[cont] = min(s, best.get(cont, s))
            outs[cont] = [r["choices"][0]["messages"] for r in rows]
            toks = [r["usage"]["completion_tokens"] for r in rows]
            print(f"round {rnd} {'continuous' if cont else 'generate  '}: {s:7.1f} s  {args.rows / s:5.2f} rows/s  "
                  f"completion tokens mean {sum(toks) / len(toks):.1f}", flush=True)
    eq = sum(a == b for a, b in zip(outs[True], outs[False]))
    print(f"continuous / generate: {best[False] / best[True]:.2f}x (fastest of {args.rounds}); equal outputs "
          f"{eq}/{args.rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
