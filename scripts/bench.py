"""Side-by-side training-step benchmark: several methods, the same model and the same batch, one run.

    python scripts/bench.py                       # MiniLM, 32 RTE examples: lora, peft-lora, fft, head
    python scripts/bench.py --model tiny_bert --steps 4 --methods lora head
    python scripts/bench.py --ref lora8 \\
        --row "lora8 method=lora method.target_modules=[query,key,value,dense]" \\
        --row "elora method=elora" \\
        --row "aflora-trainable method=aflora method.freezing=false" \\
        --row "aflora-frozen method=aflora @frozen"
    python scripts/bench.py --model minilm --batch-size 16 --ref fp32 \
        --row "fp32 method=lora" --row "bf16 method=lora schedule.precision=bf16" \
        --row "compiled method=lora schedule.compile=true" \
        --row "shuffled method=lora task.max_train_samples=256 task.group_by_length=false @loader" \
        --row "grouped method=lora task.max_train_samples=256 task.group_by_length=true @loader"

A row is a label and Hydra overrides; ``@frozen`` freezes every trainable projection matrix of the
method before timing (AFLoRA after its freezing schedule has run); ``@pruned`` trains on the batch
until the method has pruned (Light-PEFT after its estimation steps); ``@loader`` steps through the row's
loader's batches in turn instead of one fixed batch (for ``task.group_by_length``: the "pad" column is
the share of padding in the row's batches). ``--methods`` is shorthand for rows
labelled by method name. Every row runs the training loop's own step (``Trainer.train_step``: forward,
backward, hooks, clipping, AdamW) on a model built as a run builds it (``build_trainer``). Rounds of
steps are interleaved across rows so that machine noise hits all rows alike. ``peft-lora`` is
huggingface/peft's LoRA with the same rank, alpha, dropout and targets as our ``lora``. The measuring
itself is ``peftlab/benchmark.py`` (shared with scripts/efficiency_tables.py).

Columns: median step time and its ratio to the reference row; FLOPs per step (torch's counter,
forward and backward) and the achieved fraction of this machine's matmul ceiling in the row's precision
(fp32, or bf16 for autocast rows: both measured at the start of the run on CPU); memory as the SPSFT paper
defines "mem" (training memory minus inference memory): on CUDA the peak allocated during a training
step minus the peak of a no-grad forward before training; on CPU the bytes a step adds (tensors
autograd saves for backward, gradients, optimizer state), counted exactly, since a process's RSS cannot
be split between rows that share one process.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from peftlab.reporting.benchmark import (
    BenchSettings,
    Row,
    add_bench_arguments,
    run_rows,
)
from peftlab.reporting.markdown import table
from peftlab.reporting.store import bench_provenance, ended
from peftlab.train import efficiency

PEFT_ROW = "peft-lora"
PEFT_PEER = f"{PEFT_ROW} method=peft"  # huggingface peft's LoRA; conf/method/peft.yaml: our lora's defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods", nargs="+", help="rows labelled by method name (default: lora peft-lora fft head)"
    )
    parser.add_argument("--row", action="append", default=[], help='"LABEL override ..." (repeatable)')
    parser.add_argument("--ref", help="row the ratios are relative to (default: the first)")
    parser.add_argument("--inference", action="store_true", help="also time eval-mode forwards of each row")
    parser.add_argument("--inference-ref", help="row the inference ratios are relative to (default: --ref)")
    add_bench_arguments(parser)
    args = parser.parse_args()
    specs = [*(args.methods or ([] if args.row else ["lora", PEFT_PEER, "fft", "head"])), *args.row]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.provenance = bench_provenance(shlex.join(["python", "scripts/bench.py", *sys.argv[1:]]))
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_rows(specs, BenchSettings.from_args(args), Path(tmp))
    ref = next((r for r in rows if r.label == args.ref), None) if args.ref else rows[0]
    if ref is None:
        parser.error(f"--ref {args.ref!r} is not a row label; labels: {[r.label for r in rows]}")
    report(rows, ref, args)


def report(rows: list[Row], ref: Row, args: argparse.Namespace) -> None:
    device = ref.device
    batch = ref.batch
    if "pixel_values" in batch:
        shape = "x".join(str(n) for n in batch["pixel_values"].shape[1:])
        described = f"{args.batch_size} images of {shape}"
    else:
        described = f"{args.batch_size}x{int(batch['attention_mask'].shape[1])} tokens"
    ref_time = statistics.median(ref.times)
    ceilings = measured_ceilings() if device.type == "cpu" else {}
    print(
        f"\nmodel={args.model} task={args.task} batch={described} "
        f"device={device} threads={torch.get_num_threads()} steps={len(ref.times)} per row (median); "
        f"ratios to {ref.label}"
    )
    out, cells = [], []
    for row in rows:
        step = statistics.median(row.times)
        gflops = row.flops / step / 1e9
        ceiling = ceilings.get(row.precision)
        peak = f"{100 * gflops / ceiling:.0f}% {row.precision}" if ceiling else "n/a"
        pad = f"{100 * row.padding:.0f}%" if row.padding is not None else "n/a"
        mem_ratio = row.memory_bytes / ref.memory_bytes if ref.memory_bytes else float("nan")
        record = {
            "row": row.label,
            "trainable_params": row.trainable,
            "step_s": step,
            "samples_per_s": args.batch_size / step,
            "time_ratio": step / ref_time,
            "flops_per_step": row.flops,
            "flops_ratio": row.flops / ref.flops,
            "gflops_per_s": gflops,
            "train_memory_bytes": row.memory_bytes,
            "memory_ratio": mem_ratio,
            "precision": row.precision,
            "fraction_of_ceiling": gflops / ceiling if ceiling else None,
            "padding": row.padding,
            "memory_detail": row.memory_detail,
        }
        out.append(record)
        cells.append(
            [row.label, f"{row.trainable:,}", f"{1000 * step:.0f}", f"{args.batch_size / step:.0f}"]
            + [f"{step / ref_time:.3f}", f"{row.flops / 1e9:.1f}", f"{row.flops / ref.flops:.3f}"]
            + [f"{gflops:.0f}", peak, pad, f"{row.memory_bytes / 2**20:.0f}", f"{mem_ratio:.3f}"]
            + [row.memory_detail]
        )
    headers = ["row", "trainable", "step ms", "samples/s", f"time / {ref.label}", "GFLOP/step"]
    headers += [f"FLOPs / {ref.label}", "GFLOP/s", "% of ceiling", "pad", "train mem MB"]
    headers += [f"mem / {ref.label}", "memory detail"]
    print("\n".join(table(headers, cells, "l" + "r" * 11 + "l")))
    if ceilings:
        print(
            "% of ceiling: achieved GFLOP/s over this machine's matmul ceiling in the row's precision, "
            f"measured now: fp32 {ceilings['fp32']:.0f}, bf16 {ceilings['bf16']:.0f} GFLOP/s (1024^3 mm)"
        )
    if ref.infer_times:
        report_inference(rows, ref, args, out)
    if args.json:
        write_json(args, ref, described, ceilings, out)


def write_json(args: argparse.Namespace, ref: Row, described: str, ceilings: dict, out: list[dict]) -> None:
    """The rows as printed, the setting and where it ran (for ``python -m peftlab.report add-bench``)."""
    setting = {
        "model": args.model,
        "task": args.task,
        "batch": described,
        "device": str(ref.device),
        "threads": torch.get_num_threads(),
        "steps_per_row": len(ref.times),
    }
    data = {
        "kind": "bench",
        "provenance": ended(args.provenance),
        "setting": setting,
        "ceilings_gflops": ceilings,
        "ref": ref.label,
        "rows": out,
    }
    args.json.write_text(json.dumps(data, indent=1) + "\n")


CEILING_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def measured_ceilings() -> dict[str, float]:
    """fp32 and bf16 matmul throughput of this CPU now (GFLOP/s)."""
    return {name: efficiency.measured_ceiling_gflops(dtype) for name, dtype in CEILING_DTYPES.items()}


def report_inference(rows: list[Row], ref: Row, args: argparse.Namespace, out: list[dict]) -> None:
    base = next((r for r in rows if r.label == args.inference_ref), ref)
    base_time = statistics.median(base.infer_times)
    kind = "peak allocated" if ref.device.type == "cuda" else "weights"
    print(f"\ninference (eval mode, no grad, same batch); memory: {kind}; ratios to {base.label}")
    cells = []
    for row, record in zip(rows, out, strict=True):
        step, mem = statistics.median(row.infer_times), row.infer_memory_bytes
        record.update({"inference_s": step, "inference_memory_bytes": mem})
        cells.append(
            [row.label, f"{1000 * step:.0f}", f"{step / base_time:.3f}", f"{mem / 2**20:.1f}"]
            + [f"{mem / base.infer_memory_bytes:.3f}"]
        )
    headers = ["row", "forward ms", f"time / {base.label}", "inference mem MB", f"mem / {base.label}"]
    print("\n".join(table(headers, cells, "lrrrr")))


if __name__ == "__main__":
    main()
