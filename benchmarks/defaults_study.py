"""Which FINETUNE defaults? Held-out score per minute of CPU training, on two tasks of different kinds.

Each run is a real ``finetune('CREATE', ...)`` of the default model (SmolLM2-135M-Instruct) in its own database
file, with only ``max_epochs`` and ``learning_rate`` set by "the user" plus the LoRA shape under study; the
score is on held-out rows the job never saw:

- ``sql``: the demo's text-to-SQL pairs (273 training, 47 held out with an unseen phrasing or value); score:
  execution accuracy (``duckdb_ft/demo/scoring.py``), as the demo reports it.
- ``tickets``: support tickets classified into one of six queues (made by code below; held-out tickets use
  phrasings that training never shows); score: exact match of the queue name.

Run from the repository root (about 10 minutes per configuration on a quiet 2-core CPU)::

    DUCKDB_FT_CACHE=.pytest_cache/model-cache .venv/bin/python benchmarks/defaults_study.py [--configs a,b] [--tasks sql]

It prints one row per (task, configuration) and writes them as JSON lines to ``--out`` (default
``/tmp/defaults_study.jsonl``); the table in ``benchmarks/README.md`` comes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import datetime, timezone

import duckdb_ft
from duckdb_ft.demo import dataset, scoring

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = ATTENTION + ["gate_proj", "up_proj", "down_proj"]
USER = {"max_epochs": 3, "learning_rate": 1e-3}  # what a user sets; the rest is the configuration under study

CONFIGS = {
    "r8-attention": {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ATTENTION},
    "r8-all-linear": {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ALL_LINEAR},
    "r16-all-linear": {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": ALL_LINEAR},
}

QUEUES = {
    "billing": ["I was charged twice for order {n}", "my invoice {n} shows the wrong amount",
                "why did my card get billed {m} euros", "please refund the duplicate payment on {n}",
                "the price on my receipt {n} is higher than on the site"],
    "shipping": ["order {n} has not arrived yet", "where is my parcel {n}", "the tracking for {n} has not moved",
                 "my package {n} went to the wrong address", "delivery of {n} is {m} days late"],
    "returns": ["how do I send back order {n}", "I want to return the shoes from order {n}",
                "the return label for {n} does not work", "can I exchange item {n} for a bigger size",
                "I returned {n} {m} days ago and got no refund"],
    "account": ["I cannot log in to my account", "please change the e-mail on my account",
                "reset my password, the link expired", "delete my account and my data",
                "my account was locked after {m} attempts"],
    "technical": ["the app crashes when I open order {n}", "the checkout page shows error {m}",
                  "the website does not load on my phone", "the search returns nothing for {n}",
                  "images do not show in the app since the update"],
    "product": ["is item {n} available in blue", "what size is model {n}", "is product {n} waterproof",
                "does item {n} come with a charger", "when will {n} be back in stock"],
}
FRAMES = ["Hello, {t}.", "{t}!", "Hi team, {t}, thanks.", "Urgent: {t}.", "{t}. Please help."]
HELD_FRAMES = ["Good morning. {t}?", "Quick question: {t}"]


def ticket_prompt(text: str) -> str:
    queues = ", ".join(QUEUES)
    return f"Classify this support ticket into one queue ({queues}). Answer with the queue only.\nTicket: {text}"


def make_tickets(seed: int = 7, held_per_queue: int = 3) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(training pairs, held-out pairs): held-out tickets use the last phrasing of each queue and unseen frames."""
    rng = random.Random(seed)
    train, test = [], []
    for queue, phrasings in QUEUES.items():
        for k, phrase in enumerate(phrasings):
            held = k == len(phrasings) - 1
            for _ in range(held_per_queue if held else 10):
                text = phrase.format(n=rng.randint(10000, 99999), m=rng.randint(2, 40))
                frame = rng.choice(HELD_FRAMES if held else FRAMES)
                (test if held else train).append((ticket_prompt(frame.format(t=text)), queue))
    rng.shuffle(train)
    return train, test


def sql_task(con) -> tuple[str, str, callable]:
    shop = dataset.make_shop()
    train, test = dataset.make_pairs(shop)
    dataset.create_tables(con, shop)
    con.execute("CREATE TABLE pairs (split VARCHAR, prompt VARCHAR, completion VARCHAR)")
    con.executemany("INSERT INTO pairs VALUES (?, ?, ?)", [("train", p.prompt, p.sql) for p in train] +
                    [("test", p.prompt, p.sql) for p in test])
    scorer = scoring.Scorer(shop)

    def score(predictions: list[str], golds: list[str]) -> float:
        return scorer.accuracy(predictions, golds)[0] / len(golds)

    return "SELECT prompt, completion FROM pairs WHERE split = 'train'", \
        "SELECT prompt, completion FROM pairs WHERE split = 'test'", score


def tickets_task(con) -> tuple[str, str, callable]:
    train, test = make_tickets()
    con.execute("CREATE TABLE pairs (split VARCHAR, prompt VARCHAR, completion VARCHAR)")
    con.executemany("INSERT INTO pairs VALUES (?, ?, ?)", [("train", p, c) for p, c in train] +
                    [("test", p, c) for p, c in test])

    def score(predictions: list[str], golds: list[str]) -> float:
        return sum((p or "").strip().lower().rstrip(".") == g for p, g in zip(predictions, golds)) / len(golds)

    return "SELECT prompt, completion FROM pairs WHERE split = 'train'", \
        "SELECT prompt, completion FROM pairs WHERE split = 'test'", score


TASKS = {"sql": (sql_task, 64), "tickets": (tickets_task, 8)}


def run(task: str, config: str) -> dict:
    folder = tempfile.mkdtemp(prefix="defaults-")
    con = duckdb_ft.connect(os.path.join(folder, "study.duckdb"))
    make, max_tokens = TASKS[task]
    train_q, test_q, score = make(con)
    options = {**USER, **CONFIGS[config]}
    # The held-out rows are the test split; validation is the job's own hold-out of training rows (the default).
    job = con.execute("SELECT finetune('CREATE', 'm', 'smollm2-135m', ?, NULL, ?)",
                      [train_q, json.dumps(options)]).fetchall()[0][0]
    status = duckdb_ft.wait(con, job)
    d = json.loads(con.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchall()[0][0])
    minutes = (d["finished_on"] - d["started_on"]) / 60000
    rows = con.execute(f"SELECT completion, complete('m', prompt, '{{\"max_tokens\": {max_tokens}}}')::JSON "
                       f"->> '$.choices[0].messages' FROM ({test_q})").fetchall()
    held_out = score([r[1] for r in rows], [r[0] for r in rows])
    con.close()
    return {"task": task, "config": config, "options": options, "status": status, "train_minutes": round(minutes, 2),
            "held_out": round(held_out, 4), "held_out_rows": len(rows), "validation_loss":
            d["training_result"]["validation_loss"], "trained_tokens": d["trained_tokens"],
            "score_per_minute": round(held_out / minutes, 4) if minutes else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--out", default="/tmp/defaults_study.jsonl")
    args = p.parse_args()
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs; user options {USER}")
    for task in args.tasks.split(","):
        for config in args.configs.split(","):
            start = time.perf_counter()
            result = run(task, config)
            result["wall_s"] = round(time.perf_counter() - start, 1)
            print(json.dumps(result), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
