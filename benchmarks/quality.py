"""Training quality across seeds: held-out task accuracy of FINETUNE's defaults against a plain transformers + peft
loop and TRL's SFTTrainer, on the same rows, rank, target modules, epochs and learning rate.

The recipes, each trained once per task and seed on the task's training rows (``benchmarks/quality_tasks.py``):

- ``finetune``: ``finetune('CREATE', ...)`` from SQL with FINETUNE's defaults, setting only what a user sets
  (``max_epochs``, ``learning_rate``) and ``seed``; no validation query, so the automatic split holds
  ``validation_fraction`` of the rows out of training and ``keep_best`` picks the epoch by their loss, as a user
  gets it. DESCRIBE's ``train_rows`` and ``held_out_rows`` are reported.
- ``finetune-all-rows``: the same with ``{"validation_fraction": 0}`` (every row trains); not run unless named.
- ``finetune+KEY=VALUE[+KEY=VALUE...]``: FINETUNE's defaults with one variable changed (the one-variable study),
  e.g. ``finetune+dedupe=none``, ``finetune+warmup_ratio=0``, ``finetune+lora_alpha=16``; VALUE is read as JSON
  where it parses (numbers, true/false), else as text. Not run unless named.
- ``plain``: a transformers + peft loop over every training row (``benchmarks/train_throughput.py``'s
  ``child_plain``): random batches padded to their longest row, the loss on completion tokens.
- ``trl``: TRL's ``SFTTrainer`` with ``completion_only_loss=True`` over every training row
  (``train_throughput.child_trl``).

Shared by all: the base model, LoRA rank, alpha, dropout and target modules of FINETUNE's defaults (every linear
projection), batch size, ``max_seq_length``, the epochs, the peak learning rate, the seed (LoRA initialisation and
batch order), and the optimizer and schedule (AdamW, FINETUNE's warm-up and linear decay, given to TRL and the
plain loop as a ``LambdaLR``). What differs is each recipe's own way with the rows: FINETUNE's hold-out, keep_best,
exact dedupe and packing; TRL's and the plain loop's padding and batching.

Every adapter is scored the same way: COMPLETE's own greedy decoding (``duckdb_ft.ml.complete.generate``, all the
recipes' adapters of a seed attached to one base model) on the task's held-out prompts, each answer checked by the
task's checker (execution of the SQL, or exact match). Printed: accuracy per task, recipe and seed; then per task
and recipe the mean over seeds +- the sample standard deviation (and the range); then, per task, each recipe
against FINETUNE's defaults, paired on the same held-out rows and seeds, with McNemar's exact test
(``duckdb_ft.evaluation.significance.mcnemar``, EVALUATE's test) on the pooled (row, seed) pairs.

Run from the repository root (TRL is in the ``bench`` extra)::

    DUCKDB_FT_CACHE=.pytest_cache/model-cache .venv/bin/python benchmarks/quality.py \\
        [--tasks library,extract] [--seeds 3] [--recipes finetune,plain,trl] [--rows 120] [--test 40] \\
        [--model FOLDER] [--out /tmp/quality.jsonl]

Every (task, seed, recipe) run is scored as soon as it is trained and written as one JSON line in ``--out``
(answers and marks included), so a run cut short keeps what it finished; ``--summarize FILE`` prints the tables
from such files (``--summarize A.jsonl B.jsonl``: their runs together).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules

import quality_tasks  # noqa: E402
import train_throughput as tt  # noqa: E402

RECIPES = ("finetune", "plain", "trl", "finetune-all-rows")  # and the variants finetune+KEY=VALUE
BASELINES = ("plain", "trl")  # what FINETUNE's defaults must match (the criterion)
DEFAULT_RECIPES = ("finetune", "plain", "trl")
LABELS = {"finetune": "FINETUNE defaults", "finetune-all-rows": "FINETUNE all rows", "plain": "plain peft loop",
          "trl": "TRL SFTTrainer"}


def shared_hyper(model_path: str, epochs: int, learning_rate: float, seed: int) -> dict[str, Any]:
    """FINETUNE's defaults with the user's two knobs and the seed, as the options the plain loop and TRL use."""
    from duckdb_ft.ml import training
    from duckdb_ft.options import TrainingOptions

    d = TrainingOptions()
    kind = json.loads((Path(model_path) / "config.json").read_text()).get("model_type", "")
    return {"max_epochs": epochs, "learning_rate": learning_rate, "lora_r": d.lora_r, "lora_alpha": d.lora_alpha,
            "lora_dropout": d.lora_dropout, "target_modules": training.DEFAULT_TARGETS.get(kind, training._LLAMA_LIKE),
            "batch_size": d.batch_size, "gradient_accumulation_steps": d.gradient_accumulation_steps,
            "max_seq_length": d.max_seq_length, "warmup_ratio": d.warmup_ratio, "weight_decay": d.weight_decay,
            "max_grad_norm": d.max_grad_norm, "seed": seed, "dtype": d.dtype,
            "gradient_checkpointing": d.gradient_checkpointing}


def write_pairs(db: Path, train: list[tuple[str, str]]) -> None:
    """The training rows as table ``pairs(id, prompt, completion, split)`` (split 'train': no validation rows)."""
    import duckdb

    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE pairs (id INTEGER, prompt VARCHAR, completion VARCHAR, split VARCHAR)")
    con.executemany("INSERT INTO pairs VALUES (?, ?, ?, 'train')", [(i, p, c) for i, (p, c) in enumerate(train)])
    con.close()


def train_finetune(db: Path, model: str, name: str, epochs: int, learning_rate: float, seed: int, out: Path,
                   extra: dict[str, Any]) -> dict[str, Any]:
    """FINETUNE from SQL with its defaults; the adapter written to ``out`` as the other recipes write theirs."""
    import duckdb_ft

    options = {"max_epochs": epochs, "learning_rate": learning_rate, "seed": seed, **extra}
    con = duckdb_ft.connect(str(db))
    try:
        t0 = time.perf_counter()
        job = con.execute("SELECT finetune('CREATE', ?, ?, 'SELECT prompt, completion FROM pairs ORDER BY id', "
                          "NULL, ?)", [name, model, json.dumps(options)]).fetchone()[0]
        status = con.execute("SELECT finetune('WAIT', ?, 100000)", [job]).fetchone()[0]
        wall = time.perf_counter() - t0
        d = json.loads(con.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchone()[0])
        if status != "SUCCESS":
            raise RuntimeError(f"FINETUNE job ended {status}: {d.get('error')}")
        config, adapter = con.execute("SELECT lora_config, adapter FROM duckdb_ft.models WHERE name = ?",
                                      [name]).fetchone()
    finally:
        con.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter.safetensors").write_bytes(bytes(adapter))
    (out / "lora_config.json").write_text(config)
    return {"wall_s": wall, "train_rows": d["train_rows"], "held_out_rows": d["held_out_rows"],
            "steps": d["step"], "best_step": d["best_step"], "validation_loss": d["training_result"]["validation_loss"]}


def variant_options(recipe: str) -> dict[str, Any] | None:
    """The FINETUNE options a recipe sets beyond the user's two knobs and the seed; None: not a FINETUNE recipe.

    >>> variant_options("finetune+dedupe=none+lora_alpha=16")
    {'dedupe': 'none', 'lora_alpha': 16}
    """
    if recipe == "finetune":
        return {}
    if recipe == "finetune-all-rows":
        return {"validation_fraction": 0}
    if not recipe.startswith("finetune+"):
        return None
    out: dict[str, Any] = {}
    for part in recipe.removeprefix("finetune+").split("+"):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise ValueError(f"recipe {recipe!r}: each change is KEY=VALUE, e.g. finetune+warmup_ratio=0")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def check_recipe(recipe: str) -> str | None:
    """What is wrong with a recipe's name (None: nothing); a variant's options are checked as FINETUNE checks them."""
    from duckdb_ft.options import TrainingOptions

    if recipe in RECIPES:
        return None
    try:
        extra = variant_options(recipe)
        if extra is None:
            return f"unknown recipe {recipe!r}"
        TrainingOptions.parse(json.dumps(extra))
    except Exception as e:  # noqa: BLE001 - the option's own error, shown to whoever runs the benchmark
        return str(e)
    return None


def recipe_id(recipe: str) -> str:
    """The recipe as an identifier (letters, digits, "_"), unique per recipe: a model name's and an adapter key's
    part (a variant's text, with its "=", "+" and ".", is hashed)."""
    import hashlib

    return recipe.replace("-", "_") if recipe in RECIPES else "v" + hashlib.sha1(recipe.encode()).hexdigest()[:10]


def train(recipe: str, work: Path, model: str, task: str, seed: int, args: argparse.Namespace,
          hyper: dict[str, Any]) -> dict[str, Any]:
    name = f"{task}_{seed}_{recipe_id(recipe)}"
    out = work / name
    extra = variant_options(recipe)
    if extra is not None:
        r = train_finetune(work / "finetune.duckdb", model, name, args.epochs, args.learning_rate, seed, out, extra)
    else:
        child = tt.run_child(recipe, {"db": str(work / "pairs.duckdb"), "hyper": hyper, "out": str(out),
                                      "model": model}, work)
        r = {"wall_s": child["wall_s"], "train_rows": None, "held_out_rows": 0, "steps": child["steps"],
             "peak_rss_mib": child["peak_rss_mib"]}
    r["adapter"] = str(out)
    return r


def answers(model: str, adapters: dict[str, str], prompts: list[str], max_tokens: int) -> dict[str, list[str]]:
    """Each adapter's greedy answers to the prompts, by COMPLETE's own decoding, the adapters on one base model."""
    from duckdb_ft.ml import complete, models
    from duckdb_ft.options import CompleteOptions

    loaded = models.load(model)
    opts = CompleteOptions(temperature=0.0, max_tokens=max_tokens)
    keys = {}
    for recipe, folder in adapters.items():
        key = f"quality-{recipe_id(recipe)}-{time.monotonic_ns()}"  # fresh: an earlier seed's adapter is another
        models.attach_adapter(loaded, key, json.loads((Path(folder) / "lora_config.json").read_text()),
                              (Path(folder) / "adapter.safetensors").read_bytes())
        keys[recipe] = key
    requests, owners = [], []
    for recipe, key in keys.items():
        for p in prompts:
            requests.append(complete.Request([{"role": "user", "content": p}], opts))
            owners.append(key)
    complete.generate(loaded, requests, adapters=owners, fail_fast=True)
    out: dict[str, list[str]] = {}
    for recipe, key in keys.items():
        out[recipe] = [r.result.text for r, k in zip(requests, owners) if k == key]
    return out  # the adapters stay attached until COMPLETE's own eviction (models.MAX_ADAPTERS) drops them


# --------------------------------------------------------------------------------------------------- summary


def spread(values: list[float]) -> float:
    """The sample standard deviation over seeds (0 for one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task and recipe: accuracies by seed, mean, spread, range; per task: each recipe against FINETUNE's
    defaults (or the first recipe), McNemar's test on the pooled (held-out row, seed) pairs."""
    from duckdb_ft.evaluation.significance import mcnemar

    tasks: dict[str, Any] = {}
    for r in records:
        t = tasks.setdefault(r["task"], {"recipes": {}, "rows": r["test_rows"]})
        t["recipes"].setdefault(r["recipe"], {})[r["seed"]] = r
    out: dict[str, Any] = {}
    for task, t in tasks.items():
        table = {}
        for recipe, by_seed in t["recipes"].items():
            acc = [by_seed[s]["accuracy"] for s in sorted(by_seed)]
            table[recipe] = {"seeds": sorted(by_seed), "accuracy": acc, "mean": statistics.fmean(acc),
                             "spread": spread(acc), "min": min(acc), "max": max(acc),
                             "wall_s": [round(by_seed[s]["wall_s"]) for s in sorted(by_seed)]}
        names = list(table)
        ref = "finetune" if "finetune" in table else names[0]
        tests = []
        for other in names:
            if other == ref:
                continue
            seeds = sorted(set(t["recipes"][ref]) & set(t["recipes"][other]))
            a = [m for s in seeds for m in t["recipes"][ref][s]["marks"]]
            b = [m for s in seeds for m in t["recipes"][other][s]["marks"]]
            only_a, only_b, p = mcnemar(a, b)
            tests.append({"a": ref, "b": other, "pairs": len(a), "only_a": only_a, "only_b": only_b, "p_value": p})
        baselines = [n for n in names if n in BASELINES] if ref == "finetune" else []  # variants are no baseline
        others = [table[n]["mean"] - table[n]["spread"] for n in baselines]
        out[task] = {"rows": t["rows"], "recipes": table, "tests": tests,
                     "reference_at_or_above_best_minus_spread": (table[ref]["mean"] >= max(others)) if others else None}
    return out


def rescore(records: list[dict[str, Any]], test_rows: int | None) -> None:
    """Each record's marks and accuracy again, from its stored answers and the task's current checker."""
    tasks: dict[str, quality_tasks.Task] = {}
    for r in records:
        task = tasks.get(r["task"]) or tasks.setdefault(r["task"], quality_tasks.make(r["task"], None, test_rows))
        if len(task.test) != len(r["answers"]):
            raise SystemExit(f"{r['task']}: {len(r['answers'])} stored answers, {len(task.test)} held-out rows now: "
                             "give the run's --test")
        r["marks"] = [bool(task.check(a, g)) for a, (_, g, _) in zip(r["answers"], task.test)]
        r["right"], r["accuracy"] = sum(r["marks"]), sum(r["marks"]) / len(r["marks"])
    for task in tasks.values():
        task.close()


def print_summary(summary: dict[str, Any]) -> None:
    for task, s in summary.items():
        print(f"\n{task}: held-out accuracy over {s['rows']} rows (mean +- sample std over seeds; range)")
        for recipe, r in s["recipes"].items():
            seeds = ", ".join(f"{a:.1%}" for a in r["accuracy"])
            print(f"  {LABELS.get(recipe, recipe):<18} {r['mean']:6.1%} +- {r['spread']:5.1%}  "
                  f"[{r['min']:.1%}, {r['max']:.1%}]  seeds: {seeds}; trained in "
                  f"{', '.join(map(str, r['wall_s']))} s")
        for c in s["tests"]:
            print(f"  {LABELS.get(c['b'], c['b'])} vs {LABELS.get(c['a'], c['a'])}: right only with "
                  f"{c['b']} {c['only_b']}, only with {c['a']} {c['only_a']} of {c['pairs']} (row, seed) pairs; "
                  f"McNemar p = {c['p_value']:.3g}")
        if s["reference_at_or_above_best_minus_spread"] is not None:
            print(f"  FINETUNE's defaults >= best of the plain loop and TRL (mean - its spread): "
                  f"{'yes' if s['reference_at_or_above_best_minus_spread'] else 'NO'}")


# --------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="base model: a name or a Hugging Face folder")
    ap.add_argument("--tasks", default=",".join(quality_tasks.TASKS), help="comma-separated (default: all)")
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES),
                    help=f"comma-separated, of {', '.join(RECIPES)}, or finetune+KEY=VALUE")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per task and recipe (default 3)")
    ap.add_argument("--first-seed", type=int, default=0, help="the seeds are first-seed, first-seed + 1, ...")
    ap.add_argument("--epochs", type=int, default=3, help="max_epochs (default 3)")
    ap.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    ap.add_argument("--rows", type=int, help="at most this many training rows per task (a fixed sample)")
    ap.add_argument("--test", type=int, help="at most this many held-out rows per task (a fixed sample)")
    ap.add_argument("--order", choices=["seed", "recipe"], default="seed",
                    help="seed: every recipe of a seed, then the next seed; recipe: every seed of a recipe first")
    ap.add_argument("--out", default="/tmp/quality.jsonl", help="JSON lines, one per run, appended")
    ap.add_argument("--summarize", metavar="JSONL", nargs="+",
                    help="only print the tables of earlier --out files (their runs together)")
    ap.add_argument("--rescore", action="store_true",
                    help="with --summarize: check the stored answers again with the tasks' current checkers "
                         "(give the run's --test)")
    args = ap.parse_args(argv)
    if args.summarize:
        records = [json.loads(line) for f in args.summarize for line in Path(f).read_text().splitlines()
                   if line.strip()]
        if args.rescore:
            rescore(records, args.test)
        print_summary(summarize(records))
        return 0
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    wrong = [w for w in map(check_recipe, recipes) if w]
    if wrong:
        ap.error(f"{'; '.join(wrong)}; recipes: {', '.join(RECIPES)}, or finetune+KEY=VALUE (one FINETUNE option "
                 "changed, e.g. finetune+warmup_ratio=0)")
    bad = [x for x in tasks if x not in quality_tasks.TASKS]
    if bad or args.seeds < 1:
        ap.error(f"unknown task {', '.join(bad)}; tasks: {', '.join(quality_tasks.TASKS)}" if bad
                 else "--seeds must be at least 1")
    tt._env_setup()
    from duckdb_ft.ml import models

    path = models.resolve(args.model)
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {tt.machine()}; {tt.versions()}; load average "
          f"{os.getloadavg()[0]:.2f}; model {args.model}; epochs {args.epochs}, learning rate {args.learning_rate}",
          flush=True)
    records = []
    for task_name in tasks:
        task = quality_tasks.make(task_name, args.rows, args.test)
        work = Path(tempfile.mkdtemp(prefix=f"quality-{task_name}-"))
        try:
            write_pairs(work / "pairs.duckdb", task.train)
            shutil.copyfile(work / "pairs.duckdb", work / "finetune.duckdb")
            prompts, golds = [p for p, _, _ in task.test], [g for _, g, _ in task.test]
            print(f"{task_name}: {len(task.train)} training rows, {len(task.test)} held out", flush=True)
            seeds = range(args.first_seed, args.first_seed + args.seeds)
            runs = ([(seed, recipe) for seed in seeds for recipe in recipes] if args.order == "seed" else
                    [(seed, recipe) for recipe in recipes for seed in seeds])
            for seed, recipe in runs:  # each run scored as soon as it is trained: a cut-off run keeps what it did
                load = os.getloadavg()[0]
                trained = train(recipe, work, args.model, task_name, seed, args,
                                shared_hyper(path, args.epochs, args.learning_rate, seed))
                trained["load_average"] = [round(load, 2), round(os.getloadavg()[0], 2)]
                t0 = time.perf_counter()
                said = answers(args.model, {recipe: trained.pop("adapter")}, prompts, task.max_tokens)[recipe]
                marks = [bool(task.check(a, g)) for a, g in zip(said, golds)]
                rec = {"task": task_name, "seed": seed, "recipe": recipe, "accuracy": sum(marks) / len(marks),
                       "right": sum(marks), "test_rows": len(marks), "model": args.model, "epochs": args.epochs,
                       "learning_rate": args.learning_rate, "train_rows_given": len(task.train),
                       "eval_s": round(time.perf_counter() - t0, 1), **trained, "marks": marks,
                       "unseen": [u for _, _, u in task.test], "answers": said}
                records.append(rec)
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"  seed {seed} {LABELS.get(recipe, recipe):<18} {rec['right']}/{rec['test_rows']} = "
                      f"{rec['accuracy']:.1%} held out (trained in {rec['wall_s']:.0f} s, load average {load:.1f} -> "
                      f"{trained['load_average'][1]:.1f})", flush=True)
        finally:
            task.close()
            shutil.rmtree(work, ignore_errors=True)
    print_summary(summarize(records))
    print(f"\n# load average at the end {os.getloadavg()[0]:.2f}; runs appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
