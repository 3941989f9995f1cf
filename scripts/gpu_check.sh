#!/usr/bin/env bash
# Everything that needs a real GPU, in one run and one report (docs/gpu.md):
#   bash scripts/gpu_check.sh [--out DIR] [--quick] [--jobs N] [--data-root DIR]   (on a GPU machine)
#   bash scripts/gpu_check.sh --device cpu --quick --out DIR                       (the CPU dry-run)
# Writes DIR/gpu_check.md and DIR/gpu_check.json (default DIR: gpu_check); exits 1 when a check failed,
# 2 when --device cuda finds no CUDA device. The method names below are the ones this script picks:
# lora and aflora (a method with per-step hooks) under torchrun and in the --quick bf16 runs; Light-PEFT
# estimates for 4 steps (its default 800-step estimation run is the same code, 200 times longer).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export HF_HUB_OFFLINE=1
exec "$PYTHON" -m peftlab.reporting.gpu_check \
    --ddp-methods lora aflora \
    --quick-bf16-methods lora aflora \
    --tables aflora light-peft spsft \
    --method-override light_peft:method.estimation_steps=4 \
    --method-override light_peft_adapter:method.estimation_steps=4 \
    "$@"
