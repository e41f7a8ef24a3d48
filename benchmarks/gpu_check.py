"""The GPU check's measurements (run through ``benchmarks/gpu_check.sh``): FINETUNE from SQL on the default model
and on a ~0.5-1.5B model found locally, each with tokens/s, peak GPU memory and MFU against the GPU's bf16 peak,
next to TRL's SFTTrainer on the same rows, LoRA shape, batch and steps; then QLoRA (4bit) where bitsandbytes is
installed, and COMPLETE's time on the GPU. Without a CUDA GPU it runs the CPU-safe part (the default model's
FINETUNE and COMPLETE on the CPU) and says what it skipped and why.

MFU counts 6 x parameters FLOPs per trained token (the usual convention for training; LoRA skips the frozen
weights' gradients, so the work done is nearer 4 x parameters: both are printed).
"""
import glob
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

import duckdb_ft  # noqa: E402

# Dense bf16 peak TFLOP/s (no sparsity) by a substring of torch.cuda.get_device_name().
BF16_PEAK = {"H200": 989, "H100": 989, "H800": 989, "A100": 312, "A800": 312, "L40S": 362, "L40": 181, "L4": 121,
             "A10G": 70, "A10": 125, "RTX 4090": 165, "RTX 3090": 71, "A6000": 155, "V100": 0}
cuda = torch.cuda.is_available()
ROWS, BATCH, SEQ = (512 if cuda else 32), 8, 256  # a short CPU run: the CPU figures are train_throughput.py's
skipped = []
RUNS: list = []


def local_models():
    """~0.5-1.5B chat models already on this machine (the hub cache, or $GPU_CHECK_MODEL), no download."""
    if os.environ.get("GPU_CHECK_MODEL"):
        return [os.environ["GPU_CHECK_MODEL"]]
    hub = os.path.expanduser(os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub"))
    found = []
    for snap in glob.glob(f"{hub}/models--*/snapshots/*/config.json"):
        folder = os.path.dirname(snap)
        size = sum(os.path.getsize(f) for f in glob.glob(f"{folder}/*.safetensors"))
        if 0.9e9 <= size <= 3.5e9 and os.path.exists(f"{folder}/tokenizer_config.json"):  # bf16: ~0.45-1.75B
            found.append(folder)
    return sorted(found)[:1]


def peak_tflops():
    name = torch.cuda.get_device_name()
    return next((v for k, v in BF16_PEAK.items() if k in name), 0), name


def report(what, model, tokens, seconds, params):
    line = {"run": what, "model": os.path.basename(model.rstrip("/")), "tokens_per_s": round(tokens / seconds, 1)}
    if cuda:
        peak, name = peak_tflops()
        line["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        if peak:
            line["mfu_6N"] = round(6 * params * tokens / seconds / (peak * 1e12), 4)
            line["mfu_4N"] = round(4 * params * tokens / seconds / (peak * 1e12), 4)
        line["gpu"] = name
    print(json.dumps(line), flush=True)
    return line


def rows_table(con):
    con.execute(f"""CREATE OR REPLACE TABLE t AS SELECT 'Ticket ' || i || ': the ' ||
        (['printer', 'laptop', 'phone', 'router'])[i % 4 + 1] || ' on floor ' || (i % 9) || ' stopped working after '
        || 'the update; it shows error ' || (i * 37 % 1000) || '. What should I do?' AS prompt,
        'Route to the ' || (['hardware', 'network', 'mobile', 'print'])[i % 4 + 1] || ' team, priority ' ||
        (i % 3 + 1) || ', and quote error ' || (i * 37 % 1000) || '.' AS completion FROM range({ROWS}) r(i)""")


def duckdb_ft_run(con, model, quantization="none"):
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    opts = {"max_epochs": 1, "batch_size": BATCH, "max_seq_length": SEQ, "quantization": quantization,
            "validation_fraction": 0.05}
    name = f"m_{len(RUNS)}"
    RUNS.append(name)
    job = con.execute("SELECT finetune('CREATE', ?, ?, 'SELECT prompt, completion FROM t', NULL, ?)",
                      [name, model, json.dumps(opts)]).fetchall()[0][0]
    status = duckdb_ft.wait(con, job)
    if status != "SUCCESS":
        print(json.dumps({"run": "duckdb-ft", "model": model, "status": status,
                          "error": json.loads(con.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchall()[0][0])
                          .get("error")}), flush=True)
        return None
    tokens, elapsed = con.execute("SELECT last(tokens ORDER BY step), last(elapsed_s ORDER BY step) FROM "
                                  "finetune_history(?)", [job]).fetchall()[0]
    from duckdb_ft.ml import models

    params = sum(p.numel() for p in models.load(model).model.parameters())  # (4bit: the same model, unquantized)
    report(f"duckdb-ft{' ' + quantization if quantization != 'none' else ''}", model, tokens, elapsed, params)
    t = time.perf_counter()
    out = con.execute("SELECT complete(?, prompt, '{\"max_tokens\": 32}') FROM t LIMIT 32", [name]).fetchall()
    print(json.dumps({"run": "COMPLETE", "model": os.path.basename(model), "rows": len(out),
                      "rows_per_s": round(len(out) / (time.perf_counter() - t), 2)}), flush=True)
    return name


def trl_run(con, model):
    """TRL's SFTTrainer, prompt-completion format, completion-only loss, the same LoRA (r 16, alpha 32, every
    linear projection), batch, sequence length and step count as the duckdb-ft run."""
    try:
        from datasets import Dataset
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer
    except ImportError as e:
        skipped.append(f"TRL SFTTrainer ({e.name} is not installed: pip install trl)")
        return
    from duckdb_ft.ml import models

    path = models.resolve(model)
    data = con.execute("SELECT prompt, completion FROM t").fetchall()
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}],
                             "completion": [{"role": "assistant", "content": c}]} for p, c in data])
    torch.cuda.reset_peak_memory_stats()
    cfg = SFTConfig(output_dir="/tmp/gpu_check_trl", per_device_train_batch_size=BATCH, num_train_epochs=1,
                    max_length=SEQ, bf16=True, learning_rate=2e-4, logging_steps=1000, save_strategy="no",
                    report_to=[], model_init_kwargs={"dtype": torch.bfloat16, "attn_implementation": "sdpa"})
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=path, args=cfg, train_dataset=ds, peft_config=lora)
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    t = time.perf_counter()
    trainer.train()
    params = sum(p.numel() for p in trainer.model.parameters())
    report("TRL SFTTrainer", model, tokens, time.perf_counter() - t, params)


def main():
    con = duckdb_ft.connect()
    rows_table(con)
    targets = ["smollm2-135m"]
    if cuda:
        print(f"CUDA: {torch.cuda.device_count()} x {torch.cuda.get_device_name()}", flush=True)
        larger = local_models()
        targets += larger
        if not larger:
            skipped.append("a ~0.5-1.5B model: none in the local hub cache (set GPU_CHECK_MODEL=/path/to/folder)")
    else:
        skipped.extend(["peak GPU memory and MFU (no CUDA GPU)", "the ~0.5-1.5B model (too slow on a CPU)",
                    "QLoRA 4bit/8bit (bitsandbytes needs CUDA)", "TRL SFTTrainer side by side (GPU only here)"])
    for model in targets:
        duckdb_ft_run(con, model)
        if cuda:
            trl_run(con, model)
    if cuda:
        try:
            import bitsandbytes  # noqa: F401

            duckdb_ft_run(con, targets[-1], "4bit")
        except ImportError:
            skipped.append("QLoRA (bitsandbytes is not installed: pip install 'duckdb-ft[gpu]')")
        if torch.cuda.device_count() > 1:
            print(f"several GPUs: run benchmarks/distributed_scaling.py --devices {torch.cuda.device_count()}")
    for s in dict.fromkeys(skipped):
        print("skipped:", s, flush=True)
    con.close()


if __name__ == "__main__":
    sys.exit(main())
