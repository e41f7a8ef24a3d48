"""Scaling out (issue 18): the same FINETUNE from SQL on 1 and on N training processes (``devices``), on the same
rows, global batch and seed; prints per job the status, workers, steps, trained tokens, training tokens/s (steady
state: tokens over the last step's elapsed time, from finetune_history) and wall time (CREATE to SUCCESS, with
torchrun's start-up), the validation loss, and then the scaling efficiency (tokens/s of N processes / (N x tokens/s
of one)) and the validation-loss ratio.

CPU processes on a CPU machine, one per GPU on a CUDA machine: it runs unchanged on both. Run:
``.venv/bin/python benchmarks/distributed_scaling.py [--devices 2] [--rows 96] [--model smollm2-135m]`` (about
3 min on a 2-core CPU with the defaults).
"""
import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import duckdb_ft  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--devices", type=int, default=2)
ap.add_argument("--rows", type=int, default=96)
ap.add_argument("--batch-size", type=int, default=8, help="global batch per optimizer step (pairs)")
ap.add_argument("--epochs", type=int, default=1)
ap.add_argument("--model", default="smollm2-135m")
args = ap.parse_args()
assert args.batch_size % args.devices == 0, "--batch-size must be a multiple of --devices"

con = duckdb_ft.connect()
con.execute(f"""CREATE TABLE t AS SELECT
    'Ticket ' || i || ': my ' || (['printer', 'laptop', 'phone', 'router'])[i % 4 + 1] || ' does not ' ||
    (['start', 'connect', 'charge', 'print'])[i % 4 + 1] || ' since the update. What should I do?' AS prompt,
    'Route to the ' || (['hardware', 'network', 'mobile', 'print'])[i % 4 + 1] || ' team, priority ' ||
    (i % 3 + 1) || '.' AS completion FROM range({args.rows}) r(i)""")
common = {"max_epochs": args.epochs, "max_seq_length": 128, "learning_rate": 5e-4, "seed": 7}
results = {}
for n in (1, args.devices):
    opts = {**common, "batch_size": args.batch_size // n, "devices": n}
    t = time.perf_counter()
    job = con.execute("SELECT finetune('CREATE', ?, ?, 'SELECT prompt, completion FROM t', NULL, ?)",
                      [f"scale_{n}", args.model, json.dumps(opts)]).fetchall()[0][0]
    status = duckdb_ft.wait(con, job)
    wall = time.perf_counter() - t
    d = json.loads(con.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchall()[0][0])
    tokens, elapsed = con.execute("SELECT last(tokens ORDER BY step), last(elapsed_s ORDER BY step) "
                                  "FROM finetune_history(?)", [job]).fetchall()[0]
    results[n] = r = {"status": status, "workers": d.get("workers"), "steps": d["step"],
                      "trained_tokens": d["trained_tokens"], "tokens_per_s": round(tokens / elapsed, 1),
                      "wall_s": round(wall, 1), "validation_loss": d["training_result"]["validation_loss"],
                      "error": (d.get("error") or {}).get("message")}
    print(f"devices={n}", json.dumps(r), flush=True)
one, many = results[1], results[args.devices]
if one["status"] == many["status"] == "SUCCESS":
    eff = many["tokens_per_s"] / (args.devices * one["tokens_per_s"])
    print(f"scaling efficiency ({args.devices} vs 1): {eff:.2f}; speed-up {many['tokens_per_s'] / one['tokens_per_s']:.2f}x;"
          f" validation loss ratio {many['validation_loss'] / one['validation_loss']:.4f}")
con.close()
