"""AI_AGG and AI_SUMMARIZE_AGG at scale: wall time, model calls and the plan (chunks per level).

``--rows`` generated short product reviews (:func:`reviews`: four products, a few aspects and tones, 10 to 20
tokens each) in a DuckDB table, on the default model (``--model`` names another, e.g. a test model folder); four
statements, each timed whole (``time.perf_counter``) after a warm-up that loads the model:

- ``SELECT ai_agg(body, INSTRUCTION) FROM reviews``;
- ``SELECT ai_summarize_agg(body) FROM reviews``;
- the same two with ``GROUP BY product`` (four groups).

Model calls and tokens are read from duckdb-ft's usage history (``finetune_usage()``, its rows for ``AI_AGG`` and
``AI_SUMMARIZE_AGG``: one row per model call) before and after each statement. The plan, chunks per level for each
group (level 1: the rows packed into prompts; each later level: the partial answers combined) and each level's
prompt tokens, is recorded around ``aisql_agg._Group.prompts``, the function that packs a level (a wrapper that
counts, nothing changed). Peak RSS is the process's (``ru_maxrss``) after each statement.

``--plan-only`` generates nothing: it prints the first level's chunks for each statement, packed by the same code
with the model's tokenizer, and how many calls the whole reduction takes at most (every partial answer as long as
allowed). ``--answer-tokens`` lowers the longest answer of one call (``aisql_agg.ANSWER_TOKENS``, 512; an eighth
of the window if less), which shortens the generation, not the prompts.

Run from the repository root:

    DUCKDB_FT_CACHE=.pytest_cache/model-cache .venv/bin/python benchmarks/ai_agg_scale.py --rows 1000
    DUCKDB_FT_CACHE=.pytest_cache/model-cache .venv/bin/python benchmarks/ai_agg_scale.py --rows 10000 --plan-only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import duckdb_ft
from duckdb_ft.ml import packing
from duckdb_ft.surface import aisql_agg

import machine  # benchmarks/machine.py

INSTRUCTION = "What do customers complain about most? Answer in one or two sentences."
PRODUCTS = ["kettle", "headphones", "backpack", "desk lamp"]
ASPECTS = ["delivery", "price", "battery", "sound", "zipper", "packaging", "support", "colour", "size", "handle"]
GOOD = ["Great {p}, the {a} is excellent.", "Love this {p}; {a} better than expected.",
        "The {a} of the {p} is fine, happy overall."]
BAD = ["The {p} arrived late and the {a} was a let-down.", "Disappointed: the {a} broke after a week.",
       "Too expensive for a {p} with such poor {a}.", "Support never answered about the {a} of my {p}."]
STATEMENTS = {
    "ai_agg": f"SELECT ai_agg(body, '{INSTRUCTION}') FROM reviews",
    "ai_summarize_agg": "SELECT ai_summarize_agg(body) FROM reviews",
    "ai_agg group by product": f"SELECT product, ai_agg(body, '{INSTRUCTION}') FROM reviews GROUP BY product",
    "ai_summarize_agg group by product": "SELECT product, ai_summarize_agg(body) FROM reviews GROUP BY product",
}


def reviews(n: int) -> list[tuple[int, str, str]]:
    """``n`` reviews (id, product, body), made by code: about 40% complaints, one aspect each."""
    out = []
    for i in range(n):
        product, aspect = PRODUCTS[i % len(PRODUCTS)], ASPECTS[(i * 7 + i // 4) % len(ASPECTS)]
        templates = BAD if (i * 13) % 10 < 4 else GOOD
        out.append((i, product, templates[(i // 3) % len(templates)].format(p=product, a=aspect)
                    + f" (order {1000 + i})"))
    return out






def _usage(con) -> dict[str, int]:
    row = con.execute("SELECT count(*), sum(calls), sum(rows), sum(prompt_tokens), sum(completion_tokens) "
                      "FROM finetune_usage() WHERE function_name IN ('AI_AGG', 'AI_SUMMARIZE_AGG')").fetchall()[0]
    return dict(zip(["hours", "calls", "rows", "prompt_tokens", "completion_tokens"], [int(v or 0) for v in row]))


def _record_plan():
    """A log of (group, level, each prompt's tokens), one entry per ``_Group.prompts`` call (one level of one
    group), and the function that clears it (groups are numbered in the order they are first packed)."""
    log: list[tuple[int, int, list[int]]] = []
    numbers: dict[int, int] = {}
    levels: dict[int, int] = {}
    original = aisql_agg._Group.prompts

    def prompts(self):
        out = original(self)
        g = numbers.setdefault(id(self), len(numbers))
        levels[id(self)] = levels.get(id(self), 0) + 1
        sizes = [packing.prompt_tokens(self.loaded, json.loads(p)[0]["content"]) for p in out]
        log.append((g, levels[id(self)], sizes))
        return out

    def clear():
        log.clear()
        numbers.clear()
        levels.clear()

    aisql_agg._Group.prompts = prompts
    return log, clear


def _plan_summary(log) -> dict:
    groups: dict[int, list[int]] = {}
    tokens: dict[int, list[int]] = {}
    for g, level, sizes in log:
        groups.setdefault(g, []).append(len(sizes))
        tokens.setdefault(g, []).append(sum(sizes))
    return {"chunks_per_level": [groups[g] for g in sorted(groups)],
            "prompt_tokens_per_level": [tokens[g] for g in sorted(tokens)],
            "largest_prompt_tokens": max((max(s) for _, _, s in log if s), default=0)}


def plan_only(con, model: str, data: list[tuple[int, str, str]]) -> dict:
    """Each statement's first level, packed by AI_AGG's own code, and the calls of the whole reduction at most."""
    from duckdb_ft.ml import models as ml_models

    loaded = ml_models.load(model)
    out = {}
    for name in STATEMENTS:
        instruction = INSTRUCTION if name.startswith("ai_agg") else aisql_agg.SUMMARIZE
        groups = ([[b for _, p, b in data if p == product] for product in PRODUCTS] if "group by" in name
                  else [[b for _, _, b in data]])
        plan = []
        for items in groups:
            g = aisql_agg._Group(loaded, model, instruction, items)
            first = [packing.prompt_tokens(loaded, json.loads(p)[0]["content"]) for p in g.prompts()]
            levels, c = [len(first)], len(first)
            while c > 1:  # every partial answer as long as allowed: the most combine calls
                c = len(packing.pack([g.answer] * c, g.budget, aisql_agg.PER_ITEM))
                levels.append(c)
            plan.append({"rows": len(items), "first_level_prompt_tokens": sum(first),
                         "largest_prompt_tokens": max(first), "chunks_per_level_at_most": levels})
        out[name] = {"groups": plan, "model_calls_at_most": sum(sum(p["chunks_per_level_at_most"]) for p in plan),
                     "window": loaded.context_length, "answer_tokens": plan and g.answer, "budget": g.budget}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--only", default=",".join(STATEMENTS), help="comma-separated statements to run (names of "
                    "STATEMENTS)")
    ap.add_argument("--answer-tokens", type=int, default=aisql_agg.ANSWER_TOKENS)
    ap.add_argument("--plan-only", action="store_true")
    args = ap.parse_args()
    aisql_agg.ANSWER_TOKENS = args.answer_tokens
    con = duckdb_ft.connect()
    data = reviews(args.rows)
    con.execute("CREATE TABLE reviews (id INTEGER, product VARCHAR, body VARCHAR)")
    con.executemany("INSERT INTO reviews VALUES (?, ?, ?)", data)
    con.execute(f"SET duckdb_ft_default_model = '{args.model}'")
    report: dict = {"model": args.model, "rows": args.rows, "answer_tokens": args.answer_tokens,
                    "processor": machine.cpu(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "load_at_start": machine.load()}
    if args.plan_only:
        report["plan"] = plan_only(con, args.model, data)
        print(json.dumps(report, indent=2))
        return
    t = time.perf_counter()
    con.execute("SELECT complete(?, 'Hi', '{\"max_tokens\": 1}')", [args.model]).fetchall()
    report["warm_up_s"] = round(time.perf_counter() - t, 2)
    log, clear = _record_plan()
    report["statements"] = {}
    for name in args.only.split(","):
        sql = STATEMENTS[name]
        clear()
        before = _usage(con)
        t = time.perf_counter()
        answers = con.execute(sql).fetchall()
        seconds = time.perf_counter() - t
        after = _usage(con)
        calls = {k: after[k] - before[k] for k in ("rows", "prompt_tokens", "completion_tokens")}
        entry = {"sql": sql, "seconds": round(seconds, 1), "model_calls": calls["rows"],
                 "prompt_tokens": calls["prompt_tokens"], "completion_tokens": calls["completion_tokens"],
                 **_plan_summary(log), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                 "load_after": machine.load(), "answers": [[str(v)[:300] for v in row] for row in answers]}
        report["statements"][name] = entry
        print(f"{name}: {seconds:.1f} s, {calls['rows']} model calls, plan {entry['chunks_per_level']} "
              f"(load {machine.load()})", flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
