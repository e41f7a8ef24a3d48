"""DPO throughput: FINETUNE with ``"method": "dpo"`` from SQL vs TRL's DPOTrainer on the same pairs.

One run, the same work for both contenders, each in a fresh process (so that its peak resident memory is its own):

- base model: the default, ``smollm2-135m`` (fp32 weights), or ``--model PATH``;
- data: ``--pairs`` preference pairs (a support question; the chosen answer polite with the order number, the
  rejected one curt), the same rows for both, no validation rows;
- LoRA r 16, alpha 32, no dropout, every linear projection (duckdb-ft's default targets, given to TRL through the
  same ``LoraConfig``, seeded alike); AdamW at 5e-4, no warm-up, linear decay; micro-batches of ``--batch`` pairs,
  ``--accumulate`` of them a step (both: ``gradient_accumulation_steps``); ``--epochs``; clip 1.0; beta 0.1, the
  sigmoid loss; float32 (``--dtype`` for both);
- **FINETUNE**: ``finetune('CREATE', ...)`` on the table, then ``finetune('WAIT', ...)``: CREATE to SUCCESS, end
  to end (snapshot, tokenization, the reference log-probabilities, training, the adapter stored);
- **TRL**: ``DPOTrainer`` (TRL's defaults otherwise: the reference by switching the adapter off at every step;
  ``--trl-precompute`` sets its ``precompute_ref_log_probs``, a reference pass before training as FINETUNE's),
  from the model load to the end of ``train()``.

When a step takes every pair (``--pairs`` = ``--batch`` x ``--accumulate``), the order in which each trainer
draws the pairs cannot matter, so the two must log the same loss at every step (up to rounding): the run checks
the final loss, not only the speed. With smaller steps each trainer draws its own random batches and the per-step
losses differ.

Printed for each: wall seconds (model load included for both), the training loop's seconds (FINETUNE: from
its first step to its last, the reference pass before it; TRL: ``train()``'s loop, its reference forwards inside),
trained tokens/s (the pairs' tokens, prompt twice,
chosen and rejected, after the chat template, x epochs: the same count for both), peak resident memory
(``ru_maxrss`` from ``os.wait4``) and the per-step losses (they agree to 1e-4 on the tiny model:
tests/test_preference.py). Then the ratios FINETUNE / TRL.

Run from the repository root (TRL is in the ``bench`` and ``test`` extras)::

    DUCKDB_FT_CACHE=.pytest_cache/model-cache .venv/bin/python benchmarks/preference_throughput.py \\
        [--pairs 32] [--epochs 1] [--batch 8] [--accumulate 1] [--trl-precompute] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

LR, BETA, RANK, ALPHA, SEED = 5e-4, 0.1, 16, 32, 42


def make_pairs(n: int) -> list[tuple[str, str, str]]:
    curt = ["No idea, ask someone else.", "Not my problem.", "Dunno, check the website.", "Stop asking."]
    return [(f"Hello, I ordered a kettle last week. Where is my order {4100 + i}? It has not arrived yet.",
             f"Thank you for your patience! Order number {4100 + i} left our warehouse yesterday and should reach "
             f"you within two working days.", curt[i % 4]) for i in range(n)]


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {"method": "dpo", "beta": BETA, "learning_rate": LR, "warmup_ratio": 0.0, "max_epochs": args.epochs,
            "batch_size": args.batch, "gradient_accumulation_steps": args.accumulate, "lora_r": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0, "seed": SEED,
            "dtype": args.dtype, "validation_fraction": 0.0}


def child_finetune(spec: dict[str, Any]) -> dict[str, Any]:
    import duckdb_ft

    con = duckdb_ft.connect(spec["db"])
    con.execute("CREATE TABLE pairs (prompt VARCHAR, chosen VARCHAR, rejected VARCHAR)")
    con.executemany("INSERT INTO pairs VALUES (?, ?, ?)", spec["pairs"])
    began = time.perf_counter()
    job = con.execute("SELECT finetune('CREATE', 'bench_dpo', ?, 'SELECT * FROM pairs', NULL, ?)",
                      [spec["model"], json.dumps(spec["options"])]).fetchall()[0][0]
    status = con.execute("SELECT finetune('WAIT', ?)", [job]).fetchall()[0][0]
    wall = time.perf_counter() - began
    history = con.execute("SELECT training_loss, elapsed_s FROM finetune_history(?) ORDER BY step", [job]).fetchall()
    return {"status": status, "wall_s": wall, "losses": [r[0] for r in history],
            "loop_s": history[-1][1] if history else None}


def child_trl(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from duckdb_ft.ml import models, training
    from duckdb_ft.options import TrainingOptions

    opts = TrainingOptions(**spec["options"])
    began = time.perf_counter()
    path = models.resolve(spec["model"])
    base = models.load_for_training(path)
    torch.manual_seed(SEED)
    model = get_peft_model(base, training.lora_config(base, opts))
    chat = lambda role, text: [{"role": role, "content": text}]  # noqa: E731
    data = Dataset.from_list([{"prompt": chat("user", p), "chosen": chat("assistant", c),
                               "rejected": chat("assistant", r)} for p, c, r in spec["pairs"]])
    micro: list[float] = []  # each micro-batch's mean loss over its pairs
    loop: dict[str, float] = {}

    class Recording(DPOTrainer):
        def compute_loss(self, *a: Any, **k: Any) -> Any:
            loss = super().compute_loss(*a, **k)
            if self.model.training:
                micro.append(float(loss.detach()))
            return loss

    class Clock(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            loop.setdefault("first", time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            loop["last"] = time.perf_counter()

    config = DPOConfig(output_dir=spec["out"], per_device_train_batch_size=opts.batch_size,
                       num_train_epochs=opts.max_epochs, learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0,
                       weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, report_to=[], use_cpu=True, seed=SEED,
                       bf16=opts.dtype == "bfloat16", gradient_checkpointing=False, save_strategy="no", beta=BETA,
                       max_length=opts.max_seq_length, loss_type=["sigmoid"], optim="adamw_torch",
                       gradient_accumulation_steps=opts.gradient_accumulation_steps,
                       precompute_ref_log_probs=spec["trl_precompute"])
    Recording(model=model, args=config, train_dataset=data, processing_class=models.load_tokenizer(path),
              callbacks=[Clock()]).train()
    k = opts.gradient_accumulation_steps  # a step's loss: the mean of its (equal-sized) micro-batches' means
    losses = [sum(micro[i:i + k]) / len(micro[i:i + k]) for i in range(0, len(micro), k)]
    return {"status": "SUCCESS", "wall_s": time.perf_counter() - began, "losses": losses,
            "loop_s": loop["last"] - loop["first"] if loop else None}


def tokens(model: str, pairs: list[tuple[str, str, str]], epochs: int) -> int:
    """The trained tokens, as duckdb-ft's tokenization counts them: both sequences of every pair, x epochs."""
    from duckdb_ft.ml import data, models, preference

    stats = data.TokenStats()
    preference.tokenize(models.load_tokenizer(models.resolve(model)), [(p, c, r, None) for p, c, r in pairs], "dpo",
                        512, 8, stats)
    return stats.tokens * epochs


def run_child(kind: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    spec_path, out_path = work / f"{kind}.json", work / f"{kind}.out.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.Popen([sys.executable, __file__, "--child", kind, str(spec_path), str(out_path)])
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0 or not out_path.exists():
        return {"status": f"FAILED (exit status {status})"}
    result = json.loads(out_path.read_text())
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--accumulate", type=int, default=1, help="micro-batches of --batch pairs per optimizer step")
    ap.add_argument("--trl-precompute", action="store_true", help="TRL's precompute_ref_log_probs")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, spec_path, out_path = args.child
        spec = json.loads(Path(spec_path).read_text())
        out = (child_finetune if kind == "finetune" else child_trl)(spec)
        Path(out_path).write_text(json.dumps(out))
        return 0
    pairs = make_pairs(args.pairs)
    n_tokens = tokens(args.model, pairs, args.epochs)
    results = {}
    with tempfile.TemporaryDirectory(prefix="pref-bench-") as tmp:
        work = Path(tmp)
        for kind in ("finetune", "trl"):
            spec = {"model": args.model, "pairs": pairs, "options": _options(args), "db": str(work / "f.duckdb"),
                    "out": str(work / "trl"), "trl_precompute": args.trl_precompute}
            r = results[kind] = run_child(kind, spec, work)
            if "wall_s" in r:
                r["tokens_per_s"] = n_tokens / r["wall_s"]
            print(f"{kind:9s} {r.get('status')}: {r.get('wall_s', 0):7.1f} s (loop {r.get('loop_s') or 0:6.1f} s)  "
                  f"{r.get('tokens_per_s', 0):7.1f} tok/s  "
                  f"peak RSS {r.get('peak_rss_mib', 0):7.0f} MiB  losses {[round(x, 4) for x in r.get('losses', [])]}",
                  flush=True)
    f, t = results["finetune"], results["trl"]
    if "tokens_per_s" in f and "tokens_per_s" in t:
        print(f"FINETUNE / TRL: {f['tokens_per_s'] / t['tokens_per_s']:.2f}x tokens/s, "
              f"{f['peak_rss_mib'] / t['peak_rss_mib']:.2f}x peak memory ({n_tokens} tokens)")
        if f["losses"] and len(f["losses"]) == len(t["losses"]):
            worst = max(abs(a - b) / abs(b) for a, b in zip(f["losses"], t["losses"]))
            same = args.pairs <= args.batch * args.accumulate
            print(f"final loss {f['losses'][-1]:.4f} / {t['losses'][-1]:.4f}; per-step losses differ by at most "
                  f"{worst:.1e} relative" + ("" if same else " (each trainer's own batches: not comparable per step)"))
    if args.json:
        Path(args.json).write_text(json.dumps({"tokens": n_tokens, **results}, indent=1))
    return 0 if all(r.get("status") == "SUCCESS" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
