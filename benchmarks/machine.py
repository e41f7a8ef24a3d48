"""What the benchmarks share about the machine they ran on, the model they may run and the server they may start:
the processor, the load average, the test suite's tiny model, and ``duckdb-ft serve`` on a free port (imported by
the scripts beside it, whose folder is first on sys.path)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def cpu() -> str:
    """The processor's model name and the number of cores."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def load() -> str:
    """The 1, 5 and 15 minute load averages, or n/a."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def tiny_model(path: str | os.PathLike) -> str:
    """The test suite's tiny model (two layers, hidden 64, random weights seeded 0, SmolLM2's tokenizer), saved as a
    Hugging Face folder at ``path``: its path."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from duckdb_ft.ml import models

    tok = AutoTokenizer.from_pretrained(models.resolve(models.DEFAULT_MODEL))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, initializer_range=0.3)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def start_serve(db: str, log: str | None = None, env: dict[str, str] | None = None,
                wait_s: float = 300) -> tuple[subprocess.Popen, str]:
    """``duckdb-ft serve db`` as a subprocess on a free localhost port (a queue of 1024), its stderr to ``log``
    (else discarded), its environment ``env`` (else this one's): the process and its URL once ``/health``
    answers. Exits the benchmark with the server's last log lines if it dies or does not answer in ``wait_s``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("duckdb-ft")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "duckdb_ft"]
    proc = subprocess.Popen([*command, "serve", db, "--port", str(port), "--max-queue", "1024"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "w") if log else subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = Path(log).read_text()[-3000:] if log else "(no log: pass log= to keep it)"
            raise SystemExit(f"the server exited ({proc.returncode}):\n{said}")
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not answer /health within {wait_s:.0f} s")
