"""ESTIMATE and CREATE's snapshot + tokenization over many short rows: rows/s and peak RSS, each in its own process.

The table: ``--rows`` (default 1,000,000) short question/answer pairs made in SQL, about 1% exact duplicates,
0.5% conflicting, 0.5% near-duplicate prompts, 0.2% with an e-mail address, 0.1% with a card number. Phases, each
a fresh process on the same database file (peak RSS is the process's ``ru_maxrss``):

- ``estimate``: ``SELECT finetune('ESTIMATE', model, query, NULL, options)`` (the calibration is cached per machine
  and model: run it once before timing);
- ``create``: ``SELECT finetune('CREATE', ...)`` (checks, snapshot, cleaning, stored rows; the job's worker thread
  is not started), then what the training worker does before its first step, in this process: tokenize the stored
  rows (``ml.data.tokenize_reader`` over ``catalog.jobs.read_rows``) and pack every batch of one epoch's plan;
- ``reference``: what a user would write instead to count tokens (no duplicates, no personal data): the rows into a
  Hugging Face ``datasets.Dataset``, and a batched ``map`` rendering each row with ``apply_chat_template`` and
  tokenizing it with the fast tokenizer; on the first ``--reference-rows`` rows.

    DUCKDB_FT_CACHE=/work/model-cache .venv/bin/python benchmarks/prepare_scale.py [--rows N] [--json out.json]
        [--phases estimate] [--memory [tracemalloc]] [--report report.json] [--db bench.duckdb]

``--memory`` adds ESTIMATE's memory phase by phase (:mod:`memory_phases`); ``--report`` writes ESTIMATE's whole
report, to compare two versions of the code field for field (run the same script with ``PYTHONPATH`` on the other
checkout; ``--db`` reuses one table for both).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

OPTIONS = '{"max_seq_length": 128, "pii": "mask"}'
QUERY = "SELECT q AS prompt, a AS completion FROM pairs"


def build(path: str, rows: int) -> None:
    import duckdb

    con = duckdb.connect(path)
    con.execute(f"""
        CREATE TABLE pairs AS
        SELECT CASE WHEN i % 200 = 7 THEN 'What is the status of order ' || (i - 1) || '?'  -- conflicting
                    WHEN i % 200 = 9 THEN 'WHAT IS THE STATUS OF ORDER ' || (i - 2) || ' ?!'  -- near duplicate
                    WHEN i % 100 = 3 THEN 'What is the status of order ' || (i - 3) || '?'  -- exact duplicate
                    WHEN i % 500 = 11 THEN 'Please write to user' || i || '@example.com about order ' || i
                    ELSE 'What is the status of order ' || i || '?' END AS q,
               CASE WHEN i % 100 = 3 THEN 'Order ' || (i - 3) || ' shipped on day ' || ((i - 3) % 28 + 1) || '.'
                    WHEN i % 1000 = 13 THEN 'Refunded to card 4111 1111 1111 1111.'
                    ELSE 'Order ' || i || ' shipped on day ' || (i % 28 + 1) || '.' END AS a
        FROM range({rows}) t(i)""")
    con.close()


def phase(path: str, model: str, which: str, reference_rows: int = 0, memory: str = "",
          report_file: str = "") -> dict:
    import duckdb_ft

    con = duckdb_ft.connect(path)
    out: dict = {"phase": which}
    if which == "estimate" and memory:
        import memory_phases

        profile = memory_phases.Profile([con._raw.cursor()], trace_python=memory == "tracemalloc")
        profile.start()
    start = time.perf_counter()
    if which == "estimate":
        text = con.execute("SELECT finetune('ESTIMATE', ?, ?, NULL, ?)", [model, QUERY, OPTIONS]).fetchall()[0][0]
        out["seconds"] = time.perf_counter() - start
        if memory:
            out["memory_phases"] = profile.stop()
        report = json.loads(text)
        if report_file:
            with open(report_file, "w") as f:
                f.write(text)
        out["report"] = {k: report[k] for k in ("rows", "duplicates", "cost", "cleaning")}
        out["report"]["personal_data"] = {k: v["values"] for k, v in report["personal_data"].items()}
    elif which == "create":
        from duckdb_ft.catalog import jobs as jobdb
        from duckdb_ft.jobs import runner
        from duckdb_ft.ml import data, models

        runner.JobRunner.submit = lambda self, job_id: None  # the job stays PENDING: this process does its work
        name = f"bench_{int(time.time())}"
        job = con.execute("SELECT finetune('CREATE', ?, ?, ?, NULL, ?)", [name, model, QUERY, OPTIONS]).fetchall()[0][0]
        out["create_seconds"] = time.perf_counter() - start
        t = time.perf_counter()
        tok = models.load_tokenizer(models.resolve(model))
        stats = data.TokenStats()
        cur = con.cursor()
        examples = data.tokenize_reader(tok, jobdb.read_rows(cur, job, "train"), 128, stats)
        out["tokenize_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        batches = list(data.packed_batches(examples, 8, 0))  # the lazy plan, every batch packed
        out["plan_epoch_seconds"] = time.perf_counter() - t
        out["seconds"] = time.perf_counter() - start
        out["train_examples"], out["train_tokens"], out["batches"] = len(examples), stats.tokens, len(batches)
        out["describe"] = json.loads(con.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchall()[0][0])["cleaning"]
        con.execute("SELECT finetune('CANCEL', ?)", [job]).fetchall()
    else:
        import datasets
        import pyarrow as pa

        from duckdb_ft.ml import models

        tok = models.load_tokenizer(models.resolve(model))
        rows = con.execute(f"SELECT prompt, completion FROM ({QUERY}) LIMIT ?", [reference_rows]).fetchall()
        table = pa.table({"prompt": [p for p, _ in rows], "completion": [c for _, c in rows]})
        start = time.perf_counter()

        def count(batch: dict) -> dict:
            texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                                             tokenize=False) for p, c in zip(batch["prompt"], batch["completion"])]
            return {"tokens": [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]}

        counted = datasets.Dataset(datasets.table.InMemoryTable(table)).map(count, batched=True, batch_size=4096)
        out["seconds"] = time.perf_counter() - start
        out["rows"], out["tokens"] = len(counted), int(sum(counted["tokens"]))
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if "memory_phases" in out:  # the phases reset the peak (/proc/self/clear_refs): the process's is their largest
        out["peak_rss_mib"] = max(e["peak_rss_mib"] for e in out["memory_phases"].values())
    out["load_average_1m"] = os.getloadavg()[0]
    con.close()
    return out


def memory_table(phases: dict) -> str:
    """``--memory``'s figures, a line a phase (MiB; seconds)."""
    lines = [f"{'phase':<30} {'seconds':>8} {'peak RSS':>9} {'DuckDB':>8} {'spilled':>8} {'Arrow':>7} {'Python':>7}"]
    for name, e in phases.items():
        lines.append(f"{name:<30} {e['seconds']:>8.1f} {e['peak_rss_mib']:>9.0f} {e['duckdb_mib']:>8.0f} "
                     f"{e['duckdb_temp_mib']:>8.0f} {e['arrow_mib']:>7.0f} {e['python_mib']:>7.0f}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--reference-rows", type=int, default=20_000)
    ap.add_argument("--phases", default="reference,estimate,create", help="comma-separated, of those three")
    ap.add_argument("--json")
    ap.add_argument("--memory", nargs="?", const="sampled", default="", choices=["sampled", "tracemalloc"],
                    help="ESTIMATE's memory phase by phase (benchmarks/memory_phases.py); 'tracemalloc' adds the "
                         "Python allocations' peaks (slower)")
    ap.add_argument("--report", default="", help="write ESTIMATE's whole JSON report to this file")
    ap.add_argument("--db", help="the database file: built there if missing, reused otherwise (its table must have "
                                 "--rows rows); default: a new temporary file")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args.db, args.model, args.phase, args.reference_rows, args.memory, args.report)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or os.path.join(tmp, "bench.duckdb")
        if not os.path.exists(db):
            t = time.perf_counter()
            build(db, args.rows)
            print(f"table of {args.rows:,} rows built in {time.perf_counter() - t:.1f} s", flush=True)
        results = []
        for which in args.phases.split(","):
            extra = (["--memory", args.memory] if args.memory else []) + (["--report", args.report] if args.report
                                                                         else [])
            run = subprocess.run([sys.executable, __file__, "--phase", which, "--db", db, "--model", args.model,
                                  "--reference-rows", str(args.reference_rows)] + extra, capture_output=True,
                                 text=True)
            if run.returncode:
                print(run.stderr[-3000:], file=sys.stderr)
                return 1
            r = json.loads(run.stdout.strip().splitlines()[-1])
            r["rows_per_s"] = r.get("rows", args.rows) / r["seconds"]
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "memory_phases"}, indent=1), flush=True)
            if "memory_phases" in r:
                print(memory_table(r["memory_phases"]), flush=True)
    by = {r["phase"]: r for r in results}
    if len(by) == 3:
        print(f"ESTIMATE {by['estimate']['rows_per_s']:,.0f} rows/s = {by['estimate']['rows_per_s'] / by['reference']['rows_per_s']:.2f}x "
              f"the reference's token count alone ({by['reference']['rows_per_s']:,.0f} rows/s); CREATE + "
              f"tokenization {by['create']['rows_per_s']:,.0f} rows/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": args.rows, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
