"""ESTIMATE's training-time estimate against the real training time, on the default model: 240 short arithmetic
pairs, one epoch, batch 8. Prints ESTIMATE's cost (the calibration is measured on the first run on a machine and
cached after), then the job's trained_tokens, wall time (started to finished) and training-loop time.

    DUCKDB_FT_CACHE=.pytest_cache/model-cache .venv/bin/python benchmarks/estimate_time.py
"""

import json, time, sys
import duckdb_ft
con = duckdb_ft.connect()
con.execute("""CREATE TABLE t AS SELECT 'Question ' || i || ': what is ' || (i * 7) || ' plus ' || (i % 13) || '?' AS p,
               'The answer is ' || (i * 7 + i % 13) || '.' AS c FROM range(240) t(i)""")
opts = json.dumps({"max_epochs": 1, "batch_size": 8})
q = "SELECT p AS prompt, c AS completion FROM t"
t = time.time()
r = json.loads(con.execute("SELECT finetune('ESTIMATE', 'smollm2-135m', ?, NULL, ?)", [q, opts]).fetchall()[0][0])
print("estimate call", round(time.time() - t, 1), "s", json.dumps(r["cost"]))
job = con.execute("SELECT finetune('CREATE', 'timed', 'smollm2-135m', ?, NULL, ?)", [q, opts]).fetchall()[0][0]
con.execute("SELECT finetune('WAIT', ?, 1200)", [job]).fetchall()
d = json.loads(con.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchall()[0][0])
h = con.execute("SELECT max(elapsed_s) FROM finetune_history(?)", [job]).fetchall()[0][0]
print("job", d["status"], "trained_tokens", d["trained_tokens"], "estimate trained_tokens", r["cost"]["trained_tokens"],
      "wall", (d["finished_on"] - d["started_on"]) / 1000, "loop elapsed", h, "estimated", r["cost"]["estimated_training_seconds"])
