"""Training throughput: FINETUNE from SQL vs TRL's SFTTrainer vs a plain transformers + peft loop.

One run, the same work for the three contenders:

- base model: the default, ``smollm2-135m`` (SmolLM2-135M-Instruct, fp32 weights);
- data: ``--rows`` prompt/completion pairs of realistic, uneven length (support emails, text-to-SQL with schemas,
  extraction to JSON, ticket summaries, one-line questions: about 45 to 450 tokens after the chat template), stored
  in a DuckDB table; a fixed ``--validation`` share of them is held out, the same rows for everyone;
- LoRA r=8, alpha=16, dropout 0.05 on q/k/v/o_proj; ``max_seq_length`` 512; AdamW, peak learning rate 2e-4,
  linear warm-up over 10% of the steps then linear decay (the same per-step multiplier, ``duckdb_ft.ml.training.schedule``,
  is given to TRL and to the plain loop as a ``LambdaLR``); effective batch 8; ``--epochs`` epochs; clip 1.0; seed 42;
  the loss on completion tokens only, a mean over the completion tokens of each optimizer step; validation at each
  epoch's end; the same compute dtype for all (``--dtype``; "auto" is bf16 autocast on a CPU with AVX512-BF16/AMX);
  no gradient checkpointing unless ``--gradient-checkpointing`` (then for all three).

The contenders, each in its own process (so that peak resident memory is its own):

1. **FINETUNE**: ``SELECT finetune('CREATE', ...)`` on the table, then ``finetune('WAIT', ...)``: CREATE to SUCCESS,
   end to end (data copy, tokenization, training, per-epoch validation, adapter stored in the catalog). The base
   model's load inside the job is timed and reported apart.
2. **TRL**: the pairs exported from the table (``SELECT ... ORDER BY id``) into a conversational prompt/completion
   ``datasets.Dataset``; ``SFTTrainer`` with ``completion_only_loss=True``, ``max_length=512``, ``bf16`` as
   ``--dtype``, ``eval_strategy="epoch"``, TRL's default random batches, the same LoRA config (the model is wrapped
   with peft before the trainer, so the optimizer and schedule can be passed as ``optimizers=``).
3. **plain loop**: transformers + peft, random batches each padded to its longest row, ``model(..., labels=...)``
   (full-vocabulary logits at every position), the same optimizer, schedule, dtype and per-epoch validation.

Timed: from the start of each contender's work on the table (export, tokenization) to its trained adapter, with
the model load (``from_pretrained``) reported apart and not counted. Printed for each:

- trained tokens/s: non-padding tokens (prompt + completion, after the chat template and truncation) x epochs,
  divided by the wall time without the model load; each contender counts its own tokens, and the counts are checked
  equal;
- wall time, model load, peak resident memory of its process (``ru_maxrss`` from ``os.wait4``);
- final validation loss: one shared function applied to each contender's final adapter in a separate process:
  fp32, no autocast, one held-out pair at a time (no padding), full-vocabulary logits, mean cross-entropy over every
  completion token of the held-out pairs. Each contender's own last validation loss is shown beside it;
- achieved FLOP/s as a fraction of this machine's dense matmul peak in the training dtype, measured in the same run
  before and after the contenders, the higher reading counted (``torch.mm`` of square matrices, 1024 to 4096, best
  of several, torch's thread count as the contenders use).
  Counted FLOPs are the useful work, the same for all contenders: per trained token 4·N for the frozen matmul
  weights N (every linear layer and the LM head, the head at completion tokens only; forward 2·N, backward to the
  activations 2·N, no weight gradient) plus 6·N_lora for the LoRA weights (which do get gradients), plus causal
  attention, 6·layers·hidden·L² per sequence of L tokens (QKᵀ and AV over the causal half forward, twice that
  backward). Padding, prompt-position logits and recomputation are not counted as work.

Then the ratios FINETUNE / TRL. The script exits 1 if the shared validation losses of FINETUNE and TRL differ by
more than 2%, or if a contender fails.

Run from the repository root (TRL and psutil are in the ``bench`` extra)::

    make bench-train
    DUCKDB_FT_CACHE=.pytest_cache/model-cache .venv/bin/python benchmarks/train_throughput.py \\
        [--rows 300] [--epochs 2] [--only finetune,trl] [--json out.json]

A run with the defaults takes about 15 minutes on a 2-core CPU. Figures move with machine load: take them on a quiet
machine, and compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

MODEL = "smollm2-135m"
CONTENDERS = ("finetune", "trl", "plain")
LABELS = {"finetune": "FINETUNE (SQL)", "trl": "TRL SFTTrainer", "plain": "plain loop"}
VAL_TOLERANCE = 0.02
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def hyper(args: argparse.Namespace) -> dict[str, Any]:
    """The hyperparameters every contender uses, as FINETUNE options."""
    return {"max_epochs": args.epochs, "learning_rate": 2e-4, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
            "target_modules": TARGETS, "batch_size": 8, "gradient_accumulation_steps": 1, "max_seq_length": 512,
            "warmup_ratio": 0.1, "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": 42, "dtype": args.dtype,
            "gradient_checkpointing": args.gradient_checkpointing,
            "dedupe": "none"}  # every contender trains on every row (FINETUNE drops exact duplicates by default)


# --------------------------------------------------------------------------------------------------- the data

FIRST = ["Ana", "Ben", "Chloé", "Dmitri", "Eva", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Luis", "Mia",
         "Noah", "Olga", "Priya", "Quentin", "Rosa", "Sven", "Tariq"]
PRODUCTS = ["espresso machine", "standing desk", "noise-cancelling headphones", "trail running shoes", "e-reader",
            "cast-iron skillet", "robot vacuum", "mechanical keyboard", "air purifier", "electric kettle",
            "yoga mat", "smart thermostat", "camping tent", "blender", "office chair"]
ISSUES = {
    "late": ("my order has not arrived yet", "The tracking page has not changed for {d} days.",
             "I am sorry your {p} is late. I have asked the carrier to trace parcel {o}; if it has not moved within "
             "48 hours we will ship a replacement at no cost."),
    "broken": ("the {p} arrived damaged", "The box was crushed and {part} is cracked.",
               "I am sorry your {p} arrived damaged. Please keep the packaging; I have started a free return for "
               "order {o} and a new one will ship as soon as the carrier scans the return label."),
    "refund": ("I would like a refund", "I changed my mind about the {p} and have not opened it.",
               "No problem: unopened items can be returned within 30 days. I have emailed a prepaid label for order "
               "{o}; the refund of {price} reaches your card about 5 days after we receive it."),
    "wrong": ("I received the wrong item", "I ordered a {p} but the parcel contains something else.",
              "I am sorry for the mix-up. I have shipped the {p} for order {o} today by express delivery; please use "
              "the enclosed label to send the other item back, free of charge."),
}
FILLER = ["I have been a customer for years and this has never happened before.",
          "I need it for a trip next week, so timing matters to me.",
          "I already tried calling but the line was busy for an hour.",
          "To be honest I am quite disappointed.",
          "My neighbour recommended your shop and I was excited to try it.",
          "Could you please look into this as soon as possible?",
          "I checked the spam folder and found no email from you either.",
          "The delivery driver left no note and nobody at the building saw a parcel.",
          "I would appreciate a quick answer because I am travelling soon.",
          "Thank you in advance for your help."]
PARTS = ["the lid", "the handle", "the base", "the screen", "the glass carafe", "one leg"]
TABLES = {
    "customers": ["id INTEGER", "name VARCHAR", "country VARCHAR", "signup_date DATE", "tier VARCHAR"],
    "orders": ["id INTEGER", "customer_id INTEGER", "order_date DATE", "total DECIMAL(10,2)", "status VARCHAR"],
    "order_items": ["order_id INTEGER", "product_id INTEGER", "quantity INTEGER", "unit_price DECIMAL(10,2)"],
    "products": ["id INTEGER", "name VARCHAR", "category VARCHAR", "price DECIMAL(10,2)", "stock INTEGER"],
    "reviews": ["id INTEGER", "product_id INTEGER", "customer_id INTEGER", "stars INTEGER", "body VARCHAR"],
}
SQL_TASKS = [
    (["orders"], "How many orders have status '{s}'?", "SELECT count(*) FROM orders WHERE status = '{s}';"),
    (["customers"], "List the names of customers from {c}.", "SELECT name FROM customers WHERE country = '{c}';"),
    (["products"], "Which products in category '{cat}' cost more than {price}?",
     "SELECT name, price FROM products WHERE category = '{cat}' AND price > {price} ORDER BY price DESC;"),
    (["customers", "orders"], "What is the total amount spent by each customer from {c}?",
     "SELECT c.name, sum(o.total) AS spent FROM customers c JOIN orders o ON o.customer_id = c.id "
     "WHERE c.country = '{c}' GROUP BY c.name ORDER BY spent DESC;"),
    (["orders", "order_items", "products"], "Which {n} products sold the most units in {y}?",
     "SELECT p.name, sum(i.quantity) AS units FROM order_items i JOIN orders o ON o.id = i.order_id "
     "JOIN products p ON p.id = i.product_id WHERE year(o.order_date) = {y} GROUP BY p.name "
     "ORDER BY units DESC LIMIT {n};"),
    (["products", "reviews"], "What is the average star rating of each product in category '{cat}'?",
     "SELECT p.name, avg(r.stars) AS rating FROM products p JOIN reviews r ON r.product_id = p.id "
     "WHERE p.category = '{cat}' GROUP BY p.name ORDER BY rating DESC;"),
]
COUNTRIES = ["France", "Japan", "Brazil", "Kenya", "Canada", "Germany", "India", "Spain"]
CATEGORIES = ["kitchen", "office", "outdoor", "audio", "fitness"]
STATUSES = ["shipped", "pending", "cancelled", "delivered"]
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Brazil": "Brasília", "Kenya": "Nairobi", "Canada": "Ottawa",
            "Germany": "Berlin", "India": "New Delhi", "Spain": "Madrid", "Italy": "Rome", "Egypt": "Cairo",
            "Peru": "Lima", "Norway": "Oslo", "Chile": "Santiago", "Vietnam": "Hanoi", "Ghana": "Accra"}


def _support(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(list(ISSUES))
    subject, detail, reply = ISSUES[kind]
    fmt = dict(p=rng.choice(PRODUCTS), o=f"#{rng.randint(10000, 99999)}", d=rng.randint(3, 12),
               part=rng.choice(PARTS), price=f"${rng.randint(19, 499)}.{rng.randint(0, 99):02d}")
    body = [f"Hello, this is {rng.choice(FIRST)}.", f"Regarding order {fmt['o']}: {subject.format(**fmt)}.",
            detail.format(**fmt)]
    body += rng.sample(FILLER, k=min(len(FILLER), int(rng.lognormvariate(0.6, 0.9))))  # a long tail of chatter
    return ("Reply to this customer email as the support team.\n\n" + " ".join(body),
            reply.format(**fmt) + " Best regards, the support team.")


def _text_to_sql(rng: random.Random) -> tuple[str, str]:
    tables, question, answer = rng.choice(SQL_TASKS)
    extra = rng.sample([t for t in TABLES if t not in tables], k=rng.randint(0, 2))
    schema = "\n".join(f"CREATE TABLE {t} ({', '.join(TABLES[t])});" for t in tables + extra)
    fmt = dict(s=rng.choice(STATUSES), c=rng.choice(COUNTRIES), cat=rng.choice(CATEGORIES),
               price=rng.randint(2, 10) * 10, n=rng.randint(3, 10), y=rng.randint(2019, 2025))
    return (f"Write a DuckDB SQL query for the question, given the schema.\n\n{schema}\n\n"
            f"Question: {question.format(**fmt)}", answer.format(**fmt))


def _extraction(rng: random.Random) -> tuple[str, str]:
    name, product, qty = rng.choice(FIRST), rng.choice(PRODUCTS), rng.randint(1, 5)
    city, day = rng.choice(list(CAPITALS.values())), rng.randint(1, 28)
    notes = " ".join(rng.sample(FILLER, k=rng.randint(0, 4)))
    text = f"{name} called on March {day} and asked for {qty} x {product} to be delivered to {city}. {notes}"
    return ("Extract the order as JSON with keys customer, product, quantity, city, day.\n\n" + text.strip(),
            json.dumps({"customer": name, "product": product, "quantity": qty, "city": city, "day": day},
                       ensure_ascii=False))


def _short_qa(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(list(CAPITALS))
    return f"What is the capital of {country}?", f"The capital of {country} is {CAPITALS[country]}."


def _summary(rng: random.Random) -> tuple[str, str]:
    n = max(2, int(rng.lognormvariate(1.6, 0.6)))
    tickets = [(rng.choice(FIRST), rng.choice(PRODUCTS), rng.choice(list(ISSUES))) for _ in range(n)]
    lines = [f"- Ticket {k + 1}: {who} reports that {ISSUES[kind][0].format(p=p)} ({p})."
             for k, (who, p, kind) in enumerate(tickets)]
    counts: dict[str, int] = {}
    for _, _, kind in tickets:
        counts[kind] = counts.get(kind, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ("Summarize today's support tickets: count them by kind and name the most common kind.\n\n"
            + "\n".join(lines),
            f"{n} tickets today: {', '.join(f'{v} {k}' for k, v in ranked)}. The most common kind is '{ranked[0][0]}'.")


KINDS = [(_support, 0.35), (_text_to_sql, 0.25), (_extraction, 0.15), (_short_qa, 0.10), (_summary, 0.15)]


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, completion) pairs of five kinds, mixed; deterministic for a seed."""
    rng = random.Random(seed)
    makers, weights = zip(*KINDS)
    return [rng.choices(makers, weights)[0](rng) for _ in range(n)]


def write_table(db: Path, rows: int, validation: float) -> None:
    """The pairs as table ``pairs(id, prompt, completion, split)``; every k-th row is held out for validation."""
    import duckdb

    pairs = make_pairs(rows)
    every = max(2, round(1 / validation))
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE pairs (id INTEGER, prompt VARCHAR, completion VARCHAR, split VARCHAR)")
    con.executemany("INSERT INTO pairs VALUES (?, ?, ?, ?)",
                    [(i, p, c, "validation" if i % every == every - 1 else "train") for i, (p, c) in enumerate(pairs)])
    con.close()


def read_pairs(db: str, split: str) -> list[tuple[str, str]]:
    import duckdb

    con = duckdb.connect(db, read_only=True)
    rows = con.execute("SELECT prompt, completion FROM pairs WHERE split = ? ORDER BY id", [split]).fetchall()
    con.close()
    return rows


# --------------------------------------------------------------------------------------------------- helpers


def _env_setup() -> None:
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _dtype(name: str) -> Any:
    import torch

    from duckdb_ft.ml import training
    from duckdb_ft.options import TrainingOptions

    return training.compute_dtype(TrainingOptions(dtype=name), "cuda" if torch.cuda.is_available() else "cpu")


def _optimizer(model: Any, spec: dict[str, Any], total_steps: int) -> tuple[Any, Any]:
    """FINETUNE's optimizer and schedule: AdamW on the trainable weights, the same per-step multiplier."""
    import torch

    from duckdb_ft.ml import training
    from duckdb_ft.options import TrainingOptions

    h = spec["hyper"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=h["learning_rate"], weight_decay=h["weight_decay"])
    factor = training.schedule(TrainingOptions(**h), total_steps)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _peft(model: Any, h: dict[str, Any]) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(h["seed"])  # as FINETUNE: the same LoRA initialisation
    cfg = LoraConfig(r=h["lora_r"], lora_alpha=h["lora_alpha"], lora_dropout=h["lora_dropout"],
                     target_modules=h["target_modules"], bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def _save_adapter(model: Any, out: Path) -> None:
    from peft import get_peft_model_state_dict

    from duckdb_ft.ml import models, training

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    (out / "adapter.safetensors").write_bytes(models.adapter_to_bytes(state))
    (out / "lora_config.json").write_text(json.dumps(training.config_dict(model.peft_config["default"])))


def chat_ids(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int) -> list[tuple[list[int], int]]:
    """Each pair through the chat template, tokenized one at a time (as a plain loop would): the ids cut at
    ``max_length``, and the prompt's token count (with the generation prompt)."""
    out = []
    for p, c in pairs:
        user = [{"role": "user", "content": p}]
        prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": c}], tokenize=True,
                                             return_dict=False)
        out.append((full[:max_length], len(prompt)))
    return out


def _load_base(path: str) -> tuple[Any, float]:
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------- contenders


def child_finetune(spec: dict[str, Any]) -> dict[str, Any]:
    """FINETUNE from SQL, CREATE to SUCCESS; the model load inside the job timed apart."""
    import duckdb_ft
    from duckdb_ft.ml import data, models

    load_s = [0.0]
    real_load = models.load

    def timed_load(name: str) -> Any:  # the job's model load: reported apart
        t = time.perf_counter()
        try:
            return real_load(name)
        finally:
            load_s[0] += time.perf_counter() - t

    models.load = timed_load
    con = duckdb_ft.connect(spec["db"])
    t0 = time.perf_counter()
    job = con.execute(
        "SELECT finetune('CREATE', 'bench_model', ?, "
        "'SELECT prompt, completion FROM pairs WHERE split = ''train''', "
        "'SELECT prompt, completion FROM pairs WHERE split = ''validation''', ?)",
        [MODEL, json.dumps(spec["hyper"])]).fetchone()[0]
    status = con.execute("SELECT finetune('WAIT', ?, 100000)", [job]).fetchone()[0]
    wall = time.perf_counter() - t0 - load_s[0]  # the model load is reported apart, as for the others
    d = json.loads(con.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchone()[0])
    if status != "SUCCESS":
        raise SystemExit(f"FINETUNE job ended {status}: {d.get('error')}")
    row = con.execute("SELECT lora_config, adapter FROM duckdb_ft.models WHERE name = 'bench_model'").fetchone()
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter.safetensors").write_bytes(bytes(row[1]))
    (out / "lora_config.json").write_text(row[0])
    # Positions computed, padding included, with the job's own batching (for the padding share).
    tok = models.load_tokenizer(models.resolve(MODEL))
    ex = data.tokenize_pairs(tok, read_pairs_con(con, "train"), spec["hyper"]["max_seq_length"])
    positions = 0
    for epoch in range(spec["hyper"]["max_epochs"]):
        for rows in data.packed_batches(ex, spec["hyper"]["batch_size"], spec["hyper"]["seed"] + epoch):
            positions += data.padded_positions(ex, rows)
    con.close()
    return {"wall_s": wall, "load_s": load_s[0], "trained_tokens": d["trained_tokens"], "positions": positions,
            "steps": d["step"], "own_val_loss": d["training_result"]["validation_loss"],
            "train_loss": d["training_result"]["training_loss"]}


def read_pairs_con(con: Any, split: str) -> list[tuple[str, str]]:
    return con.execute("SELECT prompt, completion FROM pairs WHERE split = ? ORDER BY id", [split]).fetchall()


def child_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """TRL's SFTTrainer on the pairs exported from the table, completion-only loss."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from duckdb_ft.ml import models

    h = spec["hyper"]
    path = models.resolve(spec.get("model", MODEL))
    tokenizer = models.load_tokenizer(path)
    model, load_s = _load_base(path)
    t0 = time.perf_counter()

    def dataset(split: str) -> Any:
        return Dataset.from_list([{"prompt": [{"role": "user", "content": p}],
                                   "completion": [{"role": "assistant", "content": c}]}
                                  for p, c in read_pairs(spec["db"], split)])

    train, val = dataset("train"), dataset("validation")
    val = val if len(val) else None  # no validation rows (benchmarks/quality.py): no evaluation
    model = _peft(model, h)
    steps = math.ceil(len(train) / h["batch_size"]) * h["max_epochs"]
    bf16 = _dtype(h["dtype"]) == torch.bfloat16
    config = SFTConfig(
        output_dir=str(Path(spec["out"]) / "trl"), num_train_epochs=h["max_epochs"],
        per_device_train_batch_size=h["batch_size"], per_device_eval_batch_size=h["batch_size"],
        gradient_accumulation_steps=h["gradient_accumulation_steps"], learning_rate=h["learning_rate"],
        weight_decay=h["weight_decay"], max_grad_norm=h["max_grad_norm"], max_length=h["max_seq_length"],
        completion_only_loss=True, bf16=bf16, gradient_checkpointing=h["gradient_checkpointing"],
        eval_strategy="epoch" if val is not None else "no", save_strategy="no", logging_steps=10, report_to="none", seed=h["seed"],
        data_seed=h["seed"], disable_tqdm=True, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        **({"train_sampling_strategy": "group_by_length"} if spec.get("trl_group_by_length") else {}),
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, eval_dataset=val,
                         processing_class=tokenizer, optimizers=_optimizer(model, spec, steps))
    trainer.remove_callback(PrinterCallback)  # its per-step log lines; the log history is kept
    positions = [0]
    collate = trainer.data_collator

    def counting(features: Any) -> Any:  # positions computed, padding included
        out = collate(features)
        if model.training:
            positions[0] += int(out["input_ids"].numel())
        return out

    trainer.data_collator = counting
    trainer.train()
    wall = time.perf_counter() - t0
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"]) * h["max_epochs"]
    evals = [r["eval_loss"] for r in trainer.state.log_history if "eval_loss" in r]
    _save_adapter(trainer.model, Path(spec["out"]))
    lrs = [r["learning_rate"] for r in trainer.state.log_history if "learning_rate" in r]
    return {"wall_s": wall, "load_s": load_s, "trained_tokens": tokens, "positions": positions[0],
            "steps": trainer.state.global_step, "own_val_loss": evals[-1] if evals else None,
            "trl_version": __import__("trl").__version__, "bf16": config.bf16, "logged_lr": lrs}


def child_plain(spec: dict[str, Any]) -> dict[str, Any]:
    """transformers + peft, random batches padded to their longest row, full-vocabulary logits."""
    import torch

    from duckdb_ft.ml import models, training
    from duckdb_ft.options import TrainingOptions

    h = spec["hyper"]
    path = models.resolve(spec.get("model", MODEL))
    tokenizer = models.load_tokenizer(path)
    model, load_s = _load_base(path)
    t0 = time.perf_counter()

    def encode(split: str) -> list[tuple[list[int], list[int]]]:
        out = []
        for ids, n_prompt in chat_ids(tokenizer, read_pairs(spec["db"], split), h["max_seq_length"]):
            labels = ([-100] * n_prompt + ids[n_prompt:])[:len(ids)]
            if any(x != -100 for x in labels):
                out.append((ids, labels))
        return out

    def batch(rows: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, (i, lab) in enumerate(rows):
            ids[k, :len(i)], labels[k, :len(lab)], mask[k, :len(i)] = torch.tensor(i), torch.tensor(lab), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    train, val = encode("train"), encode("validation")
    model = _peft(model, h)
    if h["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    dtype = _dtype(h["dtype"])
    autocast = lambda: torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)  # noqa: E731
    bs = h["batch_size"]
    steps = math.ceil(len(train) / bs) * h["max_epochs"]
    opt, sched = _optimizer(model, spec, steps)
    gen = torch.Generator().manual_seed(h["seed"])
    positions, own_val = 0, None
    model.train()
    for _ in range(h["max_epochs"]):
        order = torch.randperm(len(train), generator=gen).tolist()
        for k in range(0, len(order), bs):
            b = batch([train[i] for i in order[k:k + bs]])
            positions += int(b["input_ids"].numel())
            with autocast():
                loss = model(**b).loss  # mean over the completion tokens of the batch
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], h["max_grad_norm"])
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), autocast():
            for k in range(0, len(val), bs):
                b = batch(val[k:k + bs])
                n = int((b["labels"][:, 1:] != -100).sum())
                total, count = total + model(**b).loss.item() * n, count + n
        own_val = total / count if count else None  # None: no validation rows
        model.train()
    wall = time.perf_counter() - t0
    _save_adapter(model, Path(spec["out"]))
    return {"wall_s": wall, "load_s": load_s, "trained_tokens": sum(len(i) for i, _ in train) * h["max_epochs"],
            "positions": positions, "steps": steps, "own_val_loss": own_val}


def child_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """Dense matmul peak: best FLOP/s of torch.mm on square matrices, fp32 and bf16."""
    import torch

    out: dict[str, Any] = {"torch_threads": torch.get_num_threads(),
                           "train_dtype": str(_dtype(spec["dtype"])).removeprefix("torch.")}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        best = 0.0
        for n in (1024, 2048, 4096):
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            a @ b
            reps = max(1, int(2e10 // (2 * n ** 3)))
            for _ in range(3):
                t = time.perf_counter()
                for _ in range(reps):
                    a @ b
                best = max(best, reps * 2 * n ** 3 / (time.perf_counter() - t))
        out[name] = best
    return out


def child_eval(spec: dict[str, Any]) -> dict[str, Any]:
    """The shared validation loss of each adapter, and the FLOP count of the trained sequences."""
    import torch
    import torch.nn.functional as F
    from peft import PeftModel, set_peft_model_state_dict

    from duckdb_ft.ml import models

    path = models.resolve(MODEL)
    tokenizer = models.load_tokenizer(path)
    h = spec["hyper"]

    def encode(split: str) -> list[tuple[list[int], int]]:
        return chat_ids(tokenizer, read_pairs(spec["db"], split), h["max_seq_length"])

    val = encode("validation")
    result: dict[str, Any] = {"val_loss": {}}
    for name, folder in spec["adapters"].items():
        base, _ = _load_base(path)
        cfg = json.loads((Path(folder) / "lora_config.json").read_text())
        model = PeftModel(base, models.lora_config_from_dict(cfg))
        state = models.adapter_from_bytes((Path(folder) / "adapter.safetensors").read_bytes())
        set_peft_model_state_dict(model, state)
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for ids, n_prompt in val:
                logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
                targets = torch.tensor(ids[1:])
                keep = torch.arange(1, len(ids)) >= n_prompt  # completion tokens (positions from n_prompt on)
                total += F.cross_entropy(logits[keep], targets[keep], reduction="sum").item()
                count += int(keep.sum())
        result["val_loss"][name] = total / count
        result["val_tokens"] = count

    # FLOPs of the useful work (see the module docstring).
    base, _ = _load_base(path)
    cfg = base.config
    embedding = base.get_input_embeddings().weight.numel()
    tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
    n_matmul = sum(p.numel() for p in base.parameters()) - (0 if tied else embedding)  # tied: the LM head once
    n_head = base.get_output_embeddings().weight.numel()
    n_lora = sum(p.numel() for p in _peft(base, h).parameters() if p.requires_grad)
    train = encode("train")
    lengths = [len(ids) for ids, _ in train]
    attention = sum(6 * cfg.num_hidden_layers * cfg.hidden_size * L * L for L in lengths)
    # The LM head's work counts at completion positions only (the loss's): prompt-position logits are not work.
    per_epoch = attention + sum((4 * (n_matmul - n_head) + 6 * n_lora) * len(ids) + 4 * n_head * (len(ids) - n_prompt)
                                for ids, n_prompt in train)
    result.update(flops=per_epoch * h["max_epochs"], n_matmul=n_matmul, n_lora=n_lora,
                  attention_share=attention / per_epoch,
                  train_tokens=sum(lengths) * h["max_epochs"], train_rows=len(lengths), val_rows=len(val),
                  lengths={"min": min(lengths), "median": sorted(lengths)[len(lengths) // 2], "max": max(lengths),
                           "mean": sum(lengths) / len(lengths)})
    return result


CHILDREN = {"finetune": child_finetune, "trl": child_trl, "plain": child_plain, "peak": child_peak,
            "eval": child_eval}


# --------------------------------------------------------------------------------------------------- parent


def run_child(kind: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run one contender in a fresh interpreter; its figures, plus its own peak RSS from ``wait4``."""
    spec_path, out_path = work / f"{kind}.spec.json", work / f"{kind}.result.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", kind, str(spec_path), str(out_path)])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"{kind} failed (exit {proc.returncode})")
    result = json.loads(out_path.read_text())
    result["process_s"] = time.perf_counter() - t0
    result["out"] = spec.get("out")
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    return result


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "transformers", "peft", "trl", "duckdb"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} missing")
    return ", ".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=300, help="prompt/completion pairs in the table (default 300)")
    ap.add_argument("--validation", type=float, default=0.15, help="share of the rows held out (default 0.15)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs (default 2)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="compute dtype for all contenders (default auto: bf16 where the CPU has it natively)")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="for all contenders")
    ap.add_argument("--only", default=",".join(CONTENDERS), help="contenders to run, comma-separated")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of the contenders, interleaved; each keeps its fastest round (default 1)")
    ap.add_argument("--trl-group-by-length", action="store_true",
                    help="TRL with train_sampling_strategy='group_by_length' (not its default)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (database, adapters)")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        kind, spec_path, out_path = args.child
        _env_setup()
        result = CHILDREN[kind](json.loads(Path(spec_path).read_text()))
        Path(out_path).write_text(json.dumps(result))
        return 0

    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(only) - set(CONTENDERS)
    if unknown:
        ap.error(f"unknown contender(s) {', '.join(sorted(unknown))}; choose from {', '.join(CONTENDERS)}")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="train-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, only, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, only: list[str], work: Path) -> int:
    db = work / "pairs.duckdb"
    db.unlink(missing_ok=True)
    write_table(db, args.rows, args.validation)
    h = hyper(args)
    load_avg = os.getloadavg()
    print(f"{MODEL}, {args.rows} pairs ({args.validation:.0%} held out), {args.epochs} epochs, dtype {args.dtype}, "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; {machine()}; {versions()}; "
          f"load average {load_avg[0]:.2f}", flush=True)
    peak = run_child("peak", {"dtype": args.dtype}, work)
    print(f"dense matmul peak: {peak['float32'] / 1e9:.0f} GFLOP/s fp32, {peak['bfloat16'] / 1e9:.0f} GFLOP/s bf16 "
          f"({peak['torch_threads']} torch threads)", flush=True)

    results: dict[str, dict[str, Any]] = {}
    for round_ in range(1, args.repeat + 1):
        for name in only:
            spec = {"db": str(db), "hyper": h, "out": str(work / f"{name}-{round_}"),
                    "trl_group_by_length": args.trl_group_by_length}
            if name == "finetune":  # FINETUNE writes its catalog into the database: give it its own copy
                copy = work / "finetune.duckdb"
                shutil.copyfile(db, copy)
                spec["db"] = str(copy)
            before = os.getloadavg()[0]
            r = run_child(name, spec, work)
            r["load_average"] = [round(before, 2), round(os.getloadavg()[0], 2)]
            print(f"{LABELS[name]:<16} {r['wall_s']:7.1f} s (+ model load {r['load_s']:.1f} s), {r['trained_tokens']} "
                  f"tokens, peak RSS {r['peak_rss_mib']:.0f} MiB; load average {before:.2f} -> "
                  f"{r['load_average'][1]:.2f}" + (f" (round {round_})" if args.repeat > 1 else ""), flush=True)
            best = results.get(name)
            r["rounds_wall_s"] = (best["rounds_wall_s"] if best else []) + [r["wall_s"]]
            r["rounds_peak_rss_mib"] = (best["rounds_peak_rss_mib"] if best else []) + [r["peak_rss_mib"]]
            if best is None or r["wall_s"] < best["wall_s"]:  # other work only ever slows a run down
                results[name] = r
            else:
                best["rounds_wall_s"], best["rounds_peak_rss_mib"] = r["rounds_wall_s"], r["rounds_peak_rss_mib"]
    for r in results.values():
        r["peak_rss_mib"] = max(r["rounds_peak_rss_mib"])  # the largest over rounds: memory is not noise
    ev = run_child("eval", {"db": str(db), "hyper": h,
                            "adapters": {n: results[n]["out"] for n in only}}, work)
    # The peak again after the contenders: on a shared VM it can move 2x within minutes, so the share of the peak
    # is taken against the higher of the two readings (the least flattering), and both are printed.
    peak_end = run_child("peak", {"dtype": args.dtype}, work)

    dtype_name = peak["train_dtype"]
    peak_flops = max(peak[dtype_name], peak_end[dtype_name])
    rows = []
    for name in only:
        r = results[name]
        r["tokens_per_s"] = r["trained_tokens"] / r["wall_s"]
        r["val_loss"] = ev["val_loss"][name]
        r["flops_per_s"] = ev["flops"] / r["wall_s"]
        r["peak_fraction"] = r["flops_per_s"] / peak_flops
        r["padding_share"] = 1 - r["trained_tokens"] / r["positions"] if r["positions"] else None
        rows.append(name)

    print()
    print(f"{ev['train_rows']} training pairs ({ev['lengths']['min']}-{ev['lengths']['max']} tokens, median "
          f"{ev['lengths']['median']}), {ev['val_rows']} held out ({ev['val_tokens']} completion tokens); "
          f"useful work {ev['flops'] / 1e12:.1f} TFLOP = (4 x {ev['n_matmul'] / 1e6:.1f}M frozen + "
          f"6 x {ev['n_lora'] / 1e6:.2f}M LoRA) FLOPs per token + causal attention "
          f"({100 * ev['attention_share']:.1f}%)")
    header = (f"{'contender':<16} {'tokens/s':>9} {'wall s':>8} {'load s':>7} {'peak RSS':>9} {'val loss':>9} "
              f"{'own val':>8} {'padding':>8} {'GFLOP/s':>8} {'of peak':>8}")
    print(header)
    print("-" * len(header))
    for name in rows:
        r = results[name]
        own = f"{r['own_val_loss']:.4f}" if r.get("own_val_loss") is not None else "-"
        pad = f"{100 * r['padding_share']:.1f}%" if r["padding_share"] is not None else "-"
        print(f"{LABELS[name]:<16} {r['tokens_per_s']:9.1f} {r['wall_s']:8.1f} {r['load_s']:7.1f} "
              f"{r['peak_rss_mib']:7.0f} M {r['val_loss']:9.4f} {own:>8} {pad:>8} "
              f"{r['flops_per_s'] / 1e9:8.1f} {100 * r['peak_fraction']:7.1f}%")
    print(f"(of peak: of the measured {dtype_name} matmul peak, {peak_flops / 1e9:.0f} GFLOP/s, the higher of "
          f"{peak[dtype_name] / 1e9:.0f} before the contenders and {peak_end[dtype_name] / 1e9:.0f} after; val loss: "
          "the shared fp32 evaluation of each final adapter; own val: each contender's own last validation)")

    ok = True
    tokens = {results[n]["trained_tokens"] for n in rows}
    if len(tokens) > 1:
        print(f"note: the contenders counted different trained tokens: "
              f"{ {n: results[n]['trained_tokens'] for n in rows} }")
    ratios: dict[str, float] = {}
    if "finetune" in results and "trl" in results:
        f, t = results["finetune"], results["trl"]
        ratios = {"tokens_per_s": f["tokens_per_s"] / t["tokens_per_s"],
                  "val_loss": f["val_loss"] / t["val_loss"],
                  "peak_rss": f["peak_rss_mib"] / t["peak_rss_mib"],
                  "peak_fraction": f["peak_fraction"] / t["peak_fraction"]}
        print(f"FINETUNE / TRL: tokens/s {ratios['tokens_per_s']:.2f}x, validation loss "
              f"{ratios['val_loss']:.4f} ({100 * (ratios['val_loss'] - 1):+.2f}%), peak RSS {ratios['peak_rss']:.2f}x")
        if abs(ratios["val_loss"] - 1) > VAL_TOLERANCE:
            print(f"FAIL: FINETUNE's validation loss is not within {100 * VAL_TOLERANCE:.0f}% of TRL's",
                  file=sys.stderr)
            ok = False
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(),
            "load_average_at_start": load_avg, "load_average_at_end": os.getloadavg(), "args": vars(args),
            "hyper": h, "peak": peak, "peak_end": peak_end, "eval": ev, "results": results,
            "ratios_finetune_vs_trl": ratios,
        }, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
