#!/usr/bin/env bash
# The three base-scale studies at the papers' own models, for a machine with a GPU and the Hugging Face hub
# (never run by the tests):
#   bash scripts/gpu_studies.sh [aflora|light_peft|spsft ...]     (default: all three)
# AFLoRA Table 1 on DeBERTaV3-base (conf/experiment/aflora_table1: 6 GLUE tasks, Table 7 schedule, 3 seeds),
# Light-PEFT on RoBERTa-large (light_peft_glue, 5 tasks, 3 seeds; Light-PEFT with its 800-step estimation),
# SPSFT Table 6 on Llama-2-7B (spsft_table6: LoRA r64 vs SPSFT r128, all-linear vs FA, 3 seeds).
# Expected time on one A100 (80 GB) per study: an ESTIMATE from FLOPs, not a measurement (no A100 here):
# a PEFT step costs ~4 x params x tokens (forward + backward through the frozen base), at ~40% of the
# A100's 312 bf16 TFLOP/s (~125 TFLOP/s), evaluation and data loading not counted.
#   AFLoRA: DeBERTaV3-base ~86M backbone params; 2.1M training examples per method-seed (Table 7 epochs)
#     x ~128 real tokens = 2.7e8 tokens x 9 = 2.5e9 tokens -> 8e17 FLOPs -> ~2 h (say 2-4 h with evaluation).
#   Light-PEFT: RoBERTa-large ~300M; (8.5k + 67k + 3.7k + 5.7k + 2.5k) x 10 epochs x ~64 tokens = 5.6e7
#     tokens x 12 runs = 6.8e8 tokens -> 8e17 FLOPs -> ~2 h (+ the 800-step estimations, ~10%).
#   SPSFT: Llama-2-7B; 256 x 5 epochs x ~300 tokens = 3.8e5 tokens per run x 12 = 4.6e6 tokens -> 1.2e17
#     FLOPs: minutes at full speed, ~1-2 h at batch 1; the zero-shot scoring (~25k items x 4 choices x ~100
#     tokens, forward only, 13 times) ~3-4 h: ~5-6 h in all.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
python_has_cuda=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$python_has_cuda" != 1 ]; then
    echo "gpu_studies.sh: no CUDA device; these studies need a GPU (the CPU ones: experiment=base_*)" >&2
    exit 2
fi
studies=("$@")
[ ${#studies[@]} -eq 0 ] && studies=(aflora light_peft spsft)
for study in "${studies[@]}"; do
    case "$study" in
        aflora) "$PYTHON" -m peftlab -m experiment=aflora_table1 model=deberta_v3_base \
                    schedule.precision=bf16 hydra.sweep.dir=multirun/gpu_aflora_table1 ;;
        light_peft) "$PYTHON" -m peftlab -m experiment=light_peft_glue model=roberta_large \
                    schedule.precision=bf16 hydra.sweep.dir=multirun/gpu_light_peft ;;
        spsft) "$PYTHON" -m peftlab -m experiment=spsft_table6 model=llama2_7b \
                    hydra.sweep.dir=multirun/gpu_spsft_table6 ;;
        *) echo "gpu_studies.sh: unknown study $study; allowed: aflora light_peft spsft" >&2; exit 2 ;;
    esac
done
