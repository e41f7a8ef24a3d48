"""``duckdb-ft serve`` soak: many requests from many clients while a fine-tuning job trains in the same server.

The load: ``--requests`` (200) requests from ``--clients`` (16) threads, each with its own ``openai`` client, each
sending its share one after the other; the requests alternate between a chat completion answered whole and a text
completion streamed (``stream_options.include_usage``), greedy, ``max_tokens`` 32 (``--max-tokens``), over the
demo's question -> SQL prompts (``duckdb_ft/demo/dataset.py``), ``--distinct`` (50) prompts each asked several
times. Before the first request a job is created through the SQL API (``finetune('CREATE', ...)`` on the demo's
training pairs, ``--job-epochs``) and the requests start once it has trained its first steps.

The server is ``duckdb-ft serve`` as a subprocess on a free port (the administrator's token); its resident memory
(with its children's) is read with psutil after the first 20 requests, after the last one, and every 0.5 s for the
peak. Printed, and written with ``--json``:

- errors: requests that raised (any exception from the client), with the first few messages;
- the job's end status (waited for after the requests, up to ``--job-timeout`` seconds) and the share of the
  requests' wall time during which it was training;
- RSS after the first 20 requests, after all of them, their ratio (target <= 1.2), and the peak;
- prompts whose repeated greedy answers differ (they should not: greedy answers do not depend on the batch);
- how the server stopped: SIGTERM, its exit status (0) and whether its log has a traceback.

``--model`` (default ``smollm2-135m``) answers the requests; ``--job-model`` (default: ``--model``) trains. Either
may be ``tiny``: a two-layer Llama with random weights and SmolLM2's tokenizer (the test suite's tiny model), built
in the temporary folder and registered as base model ``tiny``: every code path is the real one, in a fraction of
the time.

Run from the repository root (``DUCKDB_FT_CACHE=.pytest_cache/model-cache`` reuses the test suite's converted
model)::

    .venv/bin/python benchmarks/serve_soak.py                  # 200 requests, 16 clients, smollm2-135m
    .venv/bin/python benchmarks/serve_soak.py --job-model tiny --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import psutil
from openai import OpenAI

import duckdb_ft
from duckdb_ft.demo import dataset
from duckdb_ft.governance.credentials import first_token

import machine  # benchmarks/machine.py

#: RSS is compared against its value once this many requests have finished.
EARLY = 20




def sql(url: str, token: str, statement: str) -> list[list]:
    req = urllib.request.Request(url + "/api/v2/statements", data=json.dumps({"statement": statement}).encode(),
                                 method="POST", headers={"Authorization": f"Bearer {token}",
                                                         "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())["data"]
    except urllib.error.HTTPError as e:  # a failed statement: its message, not a traceback
        raise SystemExit(f"{statement[:80]}... failed ({e.code}): {e.read().decode()[:500]}") from None


def rss(proc: psutil.Process) -> int:
    """Resident bytes of the process and its children."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def ask(client: OpenAI, model: str, prompt: str, max_tokens: int, stream: bool) -> str:
    """One request: a chat completion answered whole, or a text completion streamed; the answer's text."""
    if not stream:
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                           max_tokens=max_tokens, temperature=0)
        return r.choices[0].message.content
    text, usage = [], None
    for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                           stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            text.append(chunk.choices[0].text)
        usage = chunk.usage or usage
    if usage is None:
        raise RuntimeError("the stream ended without its usage chunk")
    return "".join(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--job-model", default=None, help="the model the job trains (default: --model)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--distinct", type=int, default=50, help="distinct prompts (each asked several times)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--job-epochs", type=int, default=2, help="1 to 10 (FINETUNE's max_epochs)")
    p.add_argument("--job-timeout", type=float, default=3600.0)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()

    train, test = dataset.make_pairs()
    prompts = [pair.prompt for pair in (train + test)][:args.distinct]
    folder = tempfile.mkdtemp(prefix="serve-soak-")
    db, log = os.path.join(folder, "soak.duckdb"), os.path.join(folder, "serve.log")
    con = duckdb_ft.connect(db)
    model, job_model = args.model, args.job_model or args.model
    if "tiny" in (model, job_model):
        con.execute(f"CREATE BASE MODEL tiny FROM '{machine.tiny_model(os.path.join(folder, 'tiny'))}'").fetchall()
    con.execute("CREATE TABLE pairs AS SELECT unnest(?) AS prompt, unnest(?) AS completion",
                [[x.prompt for x in train], [x.sql for x in train]])
    token = first_token(con.duckdb_connection.cursor())[0]
    con.close()

    proc, url = machine.start_serve(db, log)
    server = psutil.Process(proc.pid)
    figures: dict = {}
    try:
        OpenAI(base_url=url + "/v1", api_key=token, max_retries=0).completions.create(
            model=model, prompt="Hello", max_tokens=4, temperature=0)  # the server loads the model
        options = json.dumps({"max_epochs": args.job_epochs, "batch_size": 8})
        job = sql(url, token, f"SELECT finetune('CREATE', 'soak_job', '{job_model}', 'SELECT prompt, completion FROM "
                              f"pairs', NULL, '{options}')")[0][0]

        def job_state() -> tuple[str, int]:
            status, step = sql(url, token, f"SELECT status, step FROM finetune('DESCRIBE', '{job}')")[0]
            return status, int(step or 0)

        deadline = time.monotonic() + 600
        while (state := job_state())[0] != "IN_PROGRESS" or state[1] < 1:  # its first steps are trained
            if state[0] not in ("PENDING", "IN_PROGRESS") or time.monotonic() > deadline:
                raise SystemExit(f"the job did not start training: {state}")
            time.sleep(0.5)

        order = [prompts[i % len(prompts)] for i in range(args.requests)]
        answers: dict[str, set[str]] = defaultdict(set)
        errors: list[str] = []
        done = [0]
        samples: dict[str, int] = {}
        peak, training = [rss(server)], [0, 0]  # peak RSS; samples with the job IN_PROGRESS, all samples
        lock = threading.Lock()
        finished = threading.Event()

        def work(indexes: list[int]) -> None:
            client = OpenAI(base_url=url + "/v1", api_key=token, max_retries=0, timeout=3600)
            for i in indexes:
                try:
                    text = ask(client, model, order[i], args.max_tokens, stream=i % 2 == 1)
                    with lock:
                        answers[order[i]].add(text)
                except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                    with lock:
                        errors.append(f"request {i}: {type(e).__name__}: {e}")
                with lock:
                    done[0] += 1
                    if done[0] == EARLY:
                        samples["early"] = rss(server)

        def watch() -> None:
            while not finished.wait(0.5):
                peak[0] = max(peak[0], rss(server))
                try:
                    training[0] += job_state()[0] == "IN_PROGRESS"
                    training[1] += 1
                except OSError:
                    pass

        threads = [threading.Thread(target=work, args=(list(range(c, args.requests, args.clients)),))
                   for c in range(args.clients)]
        watcher = threading.Thread(target=watch, daemon=True)
        start = time.perf_counter()
        watcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        samples["end"] = rss(server)
        finished.set()
        watcher.join()
        status_at_end = job_state()
        t0 = time.monotonic()
        while job_state()[0] in ("PENDING", "IN_PROGRESS") and time.monotonic() - t0 < args.job_timeout:
            time.sleep(1)
        job_end, job_after = job_state()[0], time.monotonic() - t0
        peak[0] = max(peak[0], rss(server))
        figures = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                         if line.startswith("model name")), platform.processor()),
            "cores": os.cpu_count(), "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "model": model, "job_model": job_model, "requests": args.requests, "clients": args.clients,
            "max_tokens": args.max_tokens,
            "seconds": round(wall, 1), "requests_per_s": round(args.requests / wall, 2),
            "errors": len(errors), "first_errors": errors[:5],
            "job": job, "job_status_when_requests_ended": status_at_end[0], "job_step_then": status_at_end[1],
            "job_end_status": job_end, "job_seconds_after_the_requests": round(job_after, 1),
            "job_training_share_of_requests_window": round(training[0] / max(1, training[1]), 2),
            "rss_after_first_20_mb": round(samples["early"] / 2**20, 1),
            "rss_after_all_mb": round(samples["end"] / 2**20, 1),
            "rss_ratio": round(samples["end"] / samples["early"], 3), "rss_peak_mb": round(peak[0] / 2**20, 1),
            "prompts_with_differing_greedy_answers": sum(len(v) > 1 for v in answers.values()),
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed after 120 s"
        text = Path(log).read_text()
        figures.update({"server_exit_status_after_sigterm": code, "server_log_has_traceback": "Traceback" in text})
        shutil.rmtree(folder, ignore_errors=True)
    for k, v in figures.items():
        print(f"{k:40} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    ok = (figures.get("errors") == 0 and figures.get("job_end_status") == "SUCCESS"
          and figures.get("rss_ratio", 9) <= 1.2 and code == 0 and not figures["server_log_has_traceback"])
    print("soak:", "passed" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
