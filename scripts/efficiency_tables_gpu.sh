#!/usr/bin/env bash
# The three efficiency tables at the papers' full depth on one GPU, written to one folder:
#   bash scripts/efficiency_tables_gpu.sh [OUT_DIR]          (default efficiency_tables/gpu)
# fp32 throughout: the SPSFT paper states float32; the AFLoRA and Light-PEFT papers state no precision
# (their code runs the Hugging Face Trainer, fp32 unless told otherwise). Whole models: DeBERTaV3-base
# (12 blocks), RoBERTa-large (24), Llama-2-7B and Llama-3-8B (32; about 32 GiB of fp32 weights each, shared
# by the rows of a model). Sized for one 80-140 GiB GPU in under 8 minutes (3 warm-up, 1 measuring and
# 10 timed steps per row; SPSFT memory only). Extra arguments after OUT_DIR go to every table
# (e.g. --layers 2 for a smaller GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-efficiency_tables/gpu}"
shift || true
PYTHON="${PYTHON:-python}"
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
start=$(date +%s)
for table in aflora light-peft spsft; do
    "$PYTHON" scripts/efficiency_tables.py "$table" --device cuda --out "$OUT" "$@" 2>&1 | tee "$OUT/$table.log"
done
echo "all three tables in $(( $(date +%s) - start )) s: $OUT/{aflora,light-peft,spsft}.md"
