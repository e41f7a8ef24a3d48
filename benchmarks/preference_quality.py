"""Preference quality: does DPO beat the base model, beyond noise, on the worked example's held-out pairs?

The worked example of ``sql/preferences.sql`` on the default model, with enough held-out pairs for a significance
test, all from SQL in one database file:

- the feedback table is the worked example's own ``CREATE TABLE feedback`` statement, read from
  ``sql/preferences.sql``, over ``--rows`` questions instead of 48: every fourth question is held out; its
  phrasing ("Any news on order ...?") and its curt answer never appear in training;
- ``polite_sft``: ``finetune('CREATE', ...)`` on the kept answers only (supervised fine-tuning);
- ``polite_dpo``: ``finetune('CREATE', ...)`` with ``"method": "dpo"`` on the pairs (kept, discarded), the base
  model as the reference;
- one ``finetune('EVALUATE', ...)`` of the base model, SFT and DPO on the held-out pairs with the metrics
  ``preference_accuracy`` (the kept answer more likely than the discarded one) and ``completion_loss`` (of the
  kept answer), and ``finetune_comparison(id)``: wins, losses and McNemar's exact p-value per pair of models, the
  95% paired-bootstrap interval of the difference.

The jobs run one after the other (on a CPU, two at once would share the cores). Printed: the table's splits, each
job's wall time and final loss, each model's preference accuracy and completion loss, and the comparisons.

Run from the repository root (defaults: the worked example's options over 320 questions; the run recorded in
benchmarks/README.md used ``--rows 240 --epochs 1``: 60 held-out pairs)::

    DUCKDB_FT_CACHE=.pytest_cache/model-cache .venv/bin/python benchmarks/preference_quality.py \\
        [--rows 320] [--epochs 3] [--learning-rate 1e-3] [--beta 0.1] [--model smollm2-135m] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

EXAMPLE = HERE.parent / "sql" / "preferences.sql"


def feedback_sql(rows: int) -> str:
    """The worked example's ``CREATE TABLE feedback`` over ``rows`` questions instead of its 48."""
    found = re.search(r"CREATE OR REPLACE TABLE feedback AS.*?;", EXAMPLE.read_text(), re.S)
    if found is None or "FROM range(48) t(i)" not in found.group(0):
        raise SystemExit(f"{EXAMPLE}: its CREATE TABLE feedback over range(48) is not where this benchmark looks")
    return found.group(0).replace("FROM range(48) t(i)", f"FROM range({rows}) t(i)")


def run_job(con: Any, name: str, base: str, query: str, options: dict[str, Any]) -> dict[str, Any]:
    began = time.perf_counter()
    job = con.execute("SELECT finetune('CREATE', ?, ?, ?, NULL, ?)", [name, base, query, json.dumps(options)]
                      ).fetchone()[0]
    status = con.execute("SELECT finetune('WAIT', ?)", [job]).fetchone()[0]
    wall = time.perf_counter() - began
    d = json.loads(con.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchone()[0])
    steps = con.execute("SELECT count(*) FROM finetune_history(?)", [job]).fetchone()[0]
    out = {"job": job, "status": status, "wall_s": wall, "steps": steps,
           "training_loss": (d.get("training_result") or {}).get("training_loss"),
           "method_metrics": d.get("method_metrics")}
    print(f"{name}: {status} in {wall:.0f} s, {steps} steps, final training loss "
          f"{out['training_loss'] if out['training_loss'] is None else round(out['training_loss'], 4)}", flush=True)
    if status != "SUCCESS":
        raise SystemExit(f"{name}: the job ended {status}: {(d.get('error') or {}).get('message')}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=320, help="questions in the feedback table (a quarter held out)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--db", help="the database file (default: a temporary one, removed at the end)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.rows < 8:
        ap.error("--rows: at least 8 (a quarter is held out)")

    import duckdb_ft

    with tempfile.TemporaryDirectory(prefix="pref-quality-") as tmp:
        con = duckdb_ft.connect(args.db or str(Path(tmp) / "preferences.duckdb"))
        con.execute(feedback_sql(args.rows))
        splits = dict(con.execute("SELECT split, count(*) FROM feedback GROUP BY split").fetchall())
        print(f"feedback: {splits.get('train', 0)} training pairs, {splits.get('test', 0)} held out "
              f"(model {args.model}, {args.epochs} epochs, learning rate {args.learning_rate}, beta {args.beta})",
              flush=True)
        user = {"max_epochs": args.epochs, "learning_rate": args.learning_rate}
        jobs = {
            "polite_sft": run_job(con, "polite_sft", args.model, "SELECT question AS prompt, kept AS completion "
                                  "FROM feedback WHERE split = 'train'", user),
            "polite_dpo": run_job(con, "polite_dpo", args.model, "SELECT question AS prompt, kept AS chosen, "
                                  "discarded AS rejected FROM feedback WHERE split = 'train'",
                                  {**user, "method": "dpo", "beta": args.beta}),
        }
        models = [args.model, "polite_sft", "polite_dpo"]
        began = time.perf_counter()
        summary = json.loads(con.execute(
            "SELECT finetune('EVALUATE', ?, ?, ?)",
            [json.dumps(models), "SELECT id, question AS prompt, kept AS completion, discarded AS rejected "
             "FROM feedback WHERE split = 'test' ORDER BY id",
             json.dumps({"max_tokens": 1, "metrics": ["preference_accuracy", "completion_loss"]})]).fetchone()[0])
        evaluate_s = time.perf_counter() - began
        per_model = {m: dict(zip(("pairs", "chosen_preferred", "completion_loss"), r)) for m, *r in con.execute(
            "SELECT model, count(*), sum(preference_accuracy)::INT, avg(completion_loss) "
            "FROM finetune_evaluation(?) GROUP BY model", [summary["evaluation_id"]]).fetchall()}
        comparisons = [dict(zip(("a", "b", "a_score", "b_score", "wins", "losses", "ci_low", "ci_high", "test",
                                 "p_value", "better"), r)) for r in con.execute(
            "SELECT a, b, a_score, b_score, wins, losses, ci_low, ci_high, test, p_value, better "
            "FROM finetune_comparison(?) WHERE metric = 'preference_accuracy'", [summary["evaluation_id"]]).fetchall()]
        con.close()

    print(f"\nEVALUATE of {len(models)} models on the {splits.get('test', 0)} held-out pairs: {evaluate_s:.0f} s")
    print(f"{'model':14s} {'preference_accuracy':>22s} {'completion_loss':>16s}")
    for m in models:
        r = per_model[m]
        print(f"{m:14s} {r['chosen_preferred']:>4d}/{r['pairs']:<3d} = {r['chosen_preferred'] / r['pairs']:6.1%}"
              f"{r['completion_loss']:>18.3f}")
    print(f"\n{'b vs a':28s} {'difference':>10s} {'wins':>5s} {'losses':>6s} {'95% interval':>16s} "
          f"{'McNemar p':>10s}  better")
    for c in comparisons:
        print(f"{c['b'] + ' vs ' + c['a']:28s} {c['b_score'] - c['a_score']:>+10.3f} {c['wins']:>5d} "
              f"{c['losses']:>6d} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] {c['p_value']:>10.2g}  "
              f"{c['better'] or '(within noise)'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "splits": splits, "jobs": jobs,
                                               "evaluate_s": evaluate_s, "models": per_model,
                                               "comparisons": comparisons}, indent=1, default=str))
    dpo = next(c for c in comparisons if {c["a"], c["b"]} == {args.model, "polite_dpo"})
    return 0 if dpo["better"] == "polite_dpo" else 1


if __name__ == "__main__":
    sys.exit(main())
