"""COMPLETE throughput: SQL ``complete()`` over a table vs plain transformers loops, on the same model.

What is measured (one process, one loaded copy of ``smollm2-135m``, greedy decoding, the same prompts):

1. **COMPLETE**: ``SELECT complete('smollm2-135m', prompt, '{"max_tokens": N}') FROM prompts`` through
   ``duckdb_ft.connect()``; the completion is ``choices[0].messages`` of each row's JSON.
2. **per-row loop**: one transformers ``model.generate`` call per prompt (chat template, greedy,
   ``max_new_tokens=N``), the way one would naively call a model from a Python UDF.
3. **batched transformers**: a plain hand-written loop over left-padded batches (``--batch`` rows, in table
   order, not sorted by length), greedy, ``max_new_tokens=N``.

The model is loaded (load time reported apart) and warmed up once before anything is timed. Each figure is
rows/s from ``time.perf_counter`` around the whole pass; with ``--repeat R`` the three passes run R rounds,
interleaved, and each keeps its fastest pass (other work on a shared machine only ever slows a pass down).
Outputs are compared with the per-row loop's, decoded as ``duckdb_ft/complete.py`` decodes them (new tokens up
to the first end token, ``skip_special_tokens=True``, stripped). The script exits 1 if fewer than 95% of COMPLETE's outputs equal the per-row loop's.

Run from the repository root (``DUCKDB_FT_CACHE=.pytest_cache/model-cache`` reuses the test suite's converted
model)::

    .venv/bin/python benchmarks/complete_throughput.py                 # 64 prompts, max_tokens 32
    .venv/bin/python benchmarks/complete_throughput.py --rows 16 --json /tmp/complete.json
    .venv/bin/python benchmarks/complete_throughput.py --repeat 2      # best of 2 interleaved rounds

Torch uses its default thread count for the machine. The figures move with machine load; compare the ratios.
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
from typing import Any, Sequence

import torch

import duckdb_ft
from duckdb_ft.ml import models

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


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        ids.add(tokenizer.pad_token_id)
    return ids


def decode_new(tokenizer: Any, new: Sequence[int], stop: set[int]) -> str:
    """New tokens up to the first end token, decoded as duckdb_ft/complete.py decodes them."""
    new = list(new)
    n = next((i for i, t in enumerate(new) if t in stop), len(new))
    return tokenizer.decode(new[:n], skip_special_tokens=True).strip()


def greedy(max_tokens: int, pad_id: int) -> dict[str, Any]:
    return dict(max_new_tokens=max_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                pad_token_id=pad_id)


# --------------------------------------------------------------------------------------------------- the three runs


def run_complete(con: Any, max_tokens: int) -> list[str]:
    options = json.dumps({"max_tokens": max_tokens})
    rows = con.execute(f"SELECT id, complete('{MODEL}', prompt, ?) FROM prompts ORDER BY id", [options]).fetchall()
    return [json.loads(out)["choices"][0]["messages"] for _, out in rows]


def run_per_row(loaded: models.LoadedModel, prompts: Sequence[str], max_tokens: int) -> list[str]:
    model, tok = loaded.model, loaded.tokenizer
    dev = next(model.parameters()).device
    stop = stop_ids(model, tok)
    outs = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([chat_ids(tok, p)], device=dev)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 **greedy(max_tokens, tok.pad_token_id))
            outs.append(decode_new(tok, out[0, ids.shape[1]:].tolist(), stop))
    return outs


def run_batched(loaded: models.LoadedModel, prompts: Sequence[str], max_tokens: int, batch: int) -> list[str]:
    model, tok = loaded.model, loaded.tokenizer
    dev = next(model.parameters()).device
    stop = stop_ids(model, tok)
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


# --------------------------------------------------------------------------------------------------- report


@dataclass
class Figures:
    model: str
    rows: int
    max_tokens: int
    batch: int
    repeat: int
    torch_threads: int
    device: str
    machine: str
    date: str
    load_s: float
    seconds: dict[str, float] = field(default_factory=dict)
    rows_per_s: dict[str, float] = field(default_factory=dict)
    ratio_complete_vs_per_row: float = 0.0
    ratio_complete_vs_batched: float = 0.0
    complete_matches_per_row: int = 0
    batched_matches_per_row: int = 0
    match_fraction: float = 0.0
    passed: bool = False
    mismatches: list[dict[str, str]] = field(default_factory=list)


def timed(fn: Any, *args: Any) -> tuple[list[str], float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=64, help="prompts in the table (default 64)")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens / max_new_tokens (default 32)")
    ap.add_argument("--batch", type=int, default=64, help="rows per batch of the plain batched loop (default 64)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the three passes; keep each one's fastest")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    loaded = models.load(MODEL)
    load_s = time.perf_counter() - t0
    prompts = make_prompts(args.rows)

    con = duckdb_ft.connect()
    con.execute("CREATE TABLE prompts (id INTEGER, prompt VARCHAR)")
    con.executemany("INSERT INTO prompts VALUES (?, ?)", list(enumerate(prompts)))

    # Warm-up, untimed: first forward passes, the UDF path and the tokenizer.
    run_per_row(loaded, prompts[:1], 4)
    run_batched(loaded, prompts[:2], 4, 2)
    con.execute(f"SELECT complete('{MODEL}', 'Hello', '{{\"max_tokens\": 4}}')").fetchall()

    n = len(prompts)
    print(f"{MODEL}: {n} prompts, max_tokens {args.max_tokens}, torch threads {torch.get_num_threads()}, "
          f"device {models.device()}, model load {load_s:.1f} s (not timed below)", flush=True)
    results: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    runs = [
        ("complete", lambda: run_complete(con, args.max_tokens)),
        ("per_row", lambda: run_per_row(loaded, prompts, args.max_tokens)),
        ("batched", lambda: run_batched(loaded, prompts, args.max_tokens, args.batch)),
    ]
    for round_ in range(1, args.repeat + 1):
        for name, fn in runs:
            out, s = timed(fn)
            if name in results and out != results[name]:
                print(f"  note: {name} gave different outputs in round {round_}", flush=True)
            results[name], seconds[name] = out, min(s, seconds.get(name, s))
            print(f"  {name:<9} {s:8.2f} s  {n / s:7.2f} rows/s" + (f"  (round {round_})" if args.repeat > 1 else ""),
                  flush=True)

    rps = {k: n / s for k, s in seconds.items()}
    same = [c == r for c, r in zip(results["complete"], results["per_row"])]
    figs = Figures(
        model=MODEL, rows=n, max_tokens=args.max_tokens, batch=args.batch, repeat=args.repeat,
        torch_threads=torch.get_num_threads(), device=models.device(),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), load_s=round(load_s, 2),
        seconds={k: round(v, 3) for k, v in seconds.items()}, rows_per_s={k: round(v, 3) for k, v in rps.items()},
        ratio_complete_vs_per_row=round(rps["complete"] / rps["per_row"], 2),
        ratio_complete_vs_batched=round(rps["complete"] / rps["batched"], 2),
        complete_matches_per_row=sum(same),
        batched_matches_per_row=sum(b == r for b, r in zip(results["batched"], results["per_row"])),
        match_fraction=round(sum(same) / n, 4),
        mismatches=[{"prompt": p, "complete": c, "per_row": r}
                    for p, c, r, ok in zip(prompts, results["complete"], results["per_row"], same) if not ok],
    )
    figs.passed = figs.match_fraction >= MATCH_TARGET

    print(f"COMPLETE / per-row loop:        {figs.ratio_complete_vs_per_row:.2f}x")
    print(f"COMPLETE / batched transformers: {figs.ratio_complete_vs_batched:.2f}x")
    print(f"COMPLETE outputs equal to the per-row loop's: {figs.complete_matches_per_row}/{n} "
          f"({100 * figs.match_fraction:.1f}%; target {100 * MATCH_TARGET:.0f}%)")
    print(f"batched-transformers outputs equal to the per-row loop's: {figs.batched_matches_per_row}/{n}")
    for m in figs.mismatches[:5]:
        print(f"  differs: {m['prompt']!r}\n    COMPLETE: {m['complete']!r}\n    per-row:  {m['per_row']!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(asdict(figs), f, indent=2)
    if not figs.passed:
        print(f"FAIL: fewer than {100 * MATCH_TARGET:.0f}% of COMPLETE's outputs equal the per-row loop's",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
