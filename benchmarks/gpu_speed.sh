#!/usr/bin/env bash
# The GPU rows of docs/development/benchmarks.md's Speed section in one go, on one GPU, in under
# 10 minutes:
#   1. end-to-end extraction from JPEGs, --decode gpu (nvJPEG) vs CPU workers (pipeline_speed.py);
#   2. ADM block 24 at batch 64, bf16: eager vs torch.compile (inductor's default mode, bench's
#      choice, then max-autotune-no-cudagraphs), with the fraction of the dense bf16 peak.
# Each stage has a time limit (PIPELINE_TIMEOUT, ADM_TIMEOUT seconds) and prints its rows as they
# are measured, so a stage cut short still leaves the rows it finished.
#   usage: benchmarks/gpu_speed.sh [LOG_DIR]     (PYTHON=... to choose the interpreter)
set -u
cd "$(dirname "$0")/.."
out=${1:-gpu-speed-logs}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  nproc; } 2>&1 | tee "$out/machine.txt"
timeout "${PIPELINE_TIMEOUT:-170}" "$py" benchmarks/pipeline_speed.py --backbone diffusion \
  --random-weights --device cuda --precision bf16 --batch-size 64 --workers 8 --decode cpu,gpu \
  --images 1024 --rounds 2 2>&1 | tee "$out/pipeline.txt"
timeout "${ADM_TIMEOUT:-380}" "$py" benchmarks/adm_speed.py --config 256-real-structure \
  --device cuda --batch-size 64 --blocks 24 --compile \
  --compile-mode default,max-autotune-no-cudagraphs 2>&1 | tee "$out/adm.txt"
