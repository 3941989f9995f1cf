"""SPSFT vs LoRA at (about) equal trainable parameters, side by side in one run: memory, time, FLOPs.

    python scripts/spsft_memory.py                                  # MiniLM, r = 4 8 16, all-linear + FA
    python scripts/spsft_memory.py --model tiny_llama --ranks 16 32 --seq-len 256
    python scripts/spsft_memory.py --model MODEL_CONFIG --lora-dropout 0 ... model.device=cuda

Pairs follow the SPSFT paper's Tables 6-8: LoRA rank r against SPSFT with 2r rows per layer (W_f is
2r x d_in, LoRA's A and B are r x (d_in + d_out): equal counts on square layers), on every linear layer
of the backbone ("all") and on the feed-forward layers only ("FA"). LoRA uses the paper's alpha 16 and
dropout 0.1 unless told otherwise. SPSFT rows are chosen by row norm (the paper's choice for LLMs, no
data needed). "mem" is the paper's training memory minus inference memory (Appendix D.1); how it is
measured on CPU and CUDA is said in scripts/bench.py. Rows are built and stepped exactly as
scripts/bench.py does (the training loop's own step, interleaved timing rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from peftlab.reporting.benchmark import BenchSettings, Row, add_bench_arguments, run_rows
from peftlab.reporting.markdown import table
from peftlab.train.efficiency import measured_ceiling_gflops

SETTINGS = {"all": ("all-linear", "false"), "FA": ("ffn-linear", "true")}


def pair_specs(rank: int, setting: str, lora_dropout: float) -> tuple[str, str]:
    lora_targets, freeze_attention = SETTINGS[setting]
    lora = f"lora-{setting}-r{rank} method=lora method.rank={rank} method.alpha=16 "
    lora += f"method.dropout={lora_dropout} method.target_modules={lora_targets}"
    spsft = f"spsft-{setting}-r{2 * rank} method=spsft method.rank={2 * rank} "
    spsft += f"method.importance=l2 method.freeze_attention={freeze_attention}"
    return lora, spsft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16], help="LoRA ranks r (SPSFT: 2r)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--lora-dropout", type=float, default=0.1)
    add_bench_arguments(parser)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pairs = [pair_specs(r, s, args.lora_dropout) for s in args.settings for r in args.ranks]
    specs = [spec for pair in pairs for spec in pair]
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_rows(specs, BenchSettings.from_args(args), Path(tmp))
    report([(rows[2 * i], rows[2 * i + 1]) for i in range(len(pairs))], args)


def report(pairs: list[tuple[Row, Row]], args: argparse.Namespace) -> None:
    lora0 = pairs[0][0]
    device = lora0.device
    tokens = int(lora0.batch["attention_mask"].numel())
    print(
        f"\nmodel={args.model} task={args.task} batch={args.batch_size}x{tokens // args.batch_size} tokens "
        f"device={device} lora_dropout={args.lora_dropout} steps={len(lora0.times)} per row (median)"
    )
    ceiling = measured_ceiling_gflops(torch.float32) if device.type == "cpu" else None
    out, cells = [], []
    for lora, spsft in pairs:
        t_lora, t_spsft = statistics.median(lora.times), statistics.median(spsft.times)
        record = {
            "lora": lora.label,
            "spsft": spsft.label,
            "lora_params": lora.trainable,
            "spsft_params": spsft.trainable,
            "lora_memory_bytes": lora.memory_bytes,
            "spsft_memory_bytes": spsft.memory_bytes,
            "memory_ratio": spsft.memory_bytes / lora.memory_bytes,
            "time_ratio": t_spsft / t_lora,
            "flops_ratio": spsft.flops / lora.flops,
        }
        out.append(record)
        peak = f"{100 * spsft.flops / t_spsft / 1e9 / ceiling:.0f}%" if ceiling else "n/a"
        cells.append(
            [lora.label, f"{lora.trainable:,}", f"{lora.memory_bytes / 2**20:.1f}", f"{1000 * t_lora:.0f}"]
            + [
                spsft.label,
                f"{spsft.trainable:,}",
                f"{spsft.memory_bytes / 2**20:.1f}",
                f"{1000 * t_spsft:.0f}",
            ]
            + [
                f"{record['memory_ratio']:.3f}",
                f"{record['time_ratio']:.3f}",
                f"{record['flops_ratio']:.3f}",
                peak,
            ]
        )
    headers = ["LoRA row", "params", "mem MB", "step ms", "SPSFT row", "params", "mem MB", "step ms"]
    headers += ["mem SPSFT/LoRA", "time SPSFT/LoRA", "FLOPs SPSFT/LoRA", "SPSFT % of peak"]
    print("\n".join(table(headers, cells, "lrrrlrrrrrrr")))
    if ceiling:
        print(
            "% of peak: achieved GFLOP/s over this CPU's fp32 matmul ceiling, measured now: "
            f"{ceiling:.0f} GFLOP/s"
        )
    print("memory detail:")
    for lora, spsft in pairs:
        print(f"  {lora.label}: {lora.memory_detail}; {spsft.label}: {spsft.memory_detail}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
