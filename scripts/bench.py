"""Side-by-side training-step benchmark: several methods, the same model and the same batch, one run.

    python scripts/bench.py                       # MiniLM, 32 RTE examples: lora, peft-lora, fft, head
    python scripts/bench.py --model tiny_bert --steps 4 --methods lora head
    python scripts/bench.py --ref lora8 \\
        --row "lora8 method=lora method.target_modules=[query,key,value,dense]" \\
        --row "elora method=elora" \\
        --row "aflora-trainable method=aflora method.freezing=false" \\
        --row "aflora-frozen method=aflora @frozen"

A row is a label and Hydra overrides; ``@frozen`` freezes every trainable projection matrix of the
method before timing (AFLoRA after its freezing schedule has run); ``@pruned`` trains on the batch
until the method has pruned (Light-PEFT after its estimation steps). ``--methods`` is shorthand for rows
labelled by method name. Every row runs the training loop's own step (``Trainer.train_step``: forward,
backward, hooks, clipping, AdamW) on a model built as a run builds it (``build_trainer``). Rounds of
steps are interleaved across rows so that machine noise hits all rows alike. ``peft-lora`` is
huggingface/peft's LoRA with the same rank, alpha, dropout and targets as our ``lora``.

Columns: median step time and its ratio to the reference row; FLOPs per step (torch's counter,
forward and backward) and the achieved fraction of the machine's fp32 peak; memory as the SPSFT paper
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
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftlab.config import compose_config  # noqa: E402
from peftlab.experiment import build_trainer  # noqa: E402
from peftlab.methods.base import Method, register_method  # noqa: E402
from peftlab.methods.lora import LoraConfig  # noqa: E402
from peftlab.train import efficiency  # noqa: E402
from peftlab.train.loop import Trainer  # noqa: E402
from peftlab.train.optim import optimizer_state_bytes  # noqa: E402
from peftlab.train.run_dir import RunDir  # noqa: E402

PEFT_ROW = "peft-lora"
FROZEN = "@frozen"
PRUNED = "@pruned"


@register_method(PEFT_ROW)
class PeftLora(Method):
    """huggingface/peft LoRA on the backbone, configured like our ``lora`` method (bench peer only)."""

    config_class = LoraConfig
    config: LoraConfig

    def attach(self, model: torch.nn.Module) -> None:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        cfg = self.config
        peft_cfg = PeftLoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            use_rslora=cfg.rslora,
            target_modules=cfg.target_modules,
        )
        model.backbone = get_peft_model(model.backbone, peft_cfg)
        model.head.requires_grad_(True)


@dataclass
class Row:
    label: str
    trainer: Trainer
    batch: dict[str, torch.Tensor]
    times: list[float] = field(default_factory=list)
    flops: int = 0
    memory_bytes: int = 0
    memory_detail: str = ""
    inference_peak: int = 0  # CUDA only
    infer_times: list[float] = field(default_factory=list)
    infer_memory_bytes: int = 0


def make_row(spec: str, args: argparse.Namespace, steps: int, run_dir: RunDir) -> Row:
    """A trainer built exactly as a run builds it, and its one batch (the first --batch-size examples)."""
    label, *overrides = shlex.split(spec)
    frozen, pruned = FROZEN in overrides, PRUNED in overrides
    overrides = [o for o in overrides if o not in (FROZEN, PRUNED)] or [f"method={label}"]
    peft_peer = "method=" + PEFT_ROW in overrides
    overrides = ["method=lora" if o == "method=" + PEFT_ROW else o for o in overrides]
    cfg = compose_config(
        [
            f"model={args.model}",
            f"task={args.task}",
            "progress_bar=false",
            "measure.flops=false",
            f"schedule.batch_size={args.batch_size}",
            f"schedule.max_seq_length={args.seq_len}",
            f"schedule.max_steps={steps}",
            f"task.max_train_samples={args.batch_size}",
            f"output_dir={run_dir.path}",
            *args.override,
            *overrides,
        ]
    )
    if peft_peer:
        cfg.method.name = PEFT_ROW  # the bench-only method above, with LoRA's options
    trainer = build_trainer(cfg, run_dir)
    trainer.model.train()  # as Trainer.fit does: dropout on (from_pretrained returns eval mode)
    if frozen:
        freeze_projections(trainer)
    batch = {k: v.to(trainer.device) for k, v in next(iter(trainer.train_loader)).items()}
    if pruned:
        prune_early(trainer, batch)
    return Row(label, trainer, batch, inference_peak=inference_peak(trainer, batch))


def inference_peak(trainer: Trainer, batch: dict[str, torch.Tensor]) -> int:
    """CUDA peak of a no-grad forward of the batch before any training step (the SPSFT paper's mem_M:
    model + inference activations, no gradients or optimizer state yet); 0 on CPU."""
    device = trainer.device
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        trainer.model(**batch)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def freeze_projections(trainer: Trainer) -> None:
    """Freeze what the method's schedule freezes by the end of training (AFLoRA: every PM)."""
    freeze_all = getattr(trainer.method, "freeze_all", None)
    if freeze_all is None:
        raise SystemExit(f"{FROZEN}: method {trainer.method.name} has no freeze_all()")
    freeze_all(trainer.state)
    trainer.apply_param_change()


def prune_early(trainer: Trainer, batch: dict[str, torch.Tensor]) -> None:
    """Train on the batch until the method has pruned (Light-PEFT after its estimation steps)."""
    if not hasattr(trainer.method, "record"):
        raise SystemExit(f"{PRUNED}: method {trainer.method.name} does not prune")
    while trainer.method.record is None:
        trainer.train_step(batch)


def measure_once(row: Row) -> None:
    """FLOPs and memory of one step (after warm-up, so optimizer state exists)."""
    trainer, batch, device = row.trainer, row.batch, row.trainer.device
    row.flops = efficiency.count_flops(lambda: trainer.forward_backward(batch))
    trainer.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        trainer.train_step(batch)
        torch.cuda.synchronize(device)
        row.memory_bytes = torch.cuda.max_memory_allocated(device) - row.inference_peak
        row.memory_detail = "cuda train-step peak - inference peak"
        return
    param_ptrs = {p.untyped_storage().data_ptr() for p in trainer.model.parameters()}
    param_ptrs |= {b.untyped_storage().data_ptr() for b in trainer.model.buffers()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.train_step(batch)
    activations = sum(saved.values())
    grads = sum(p.numel() * p.element_size() for p in trainer.trainable)
    optim = optimizer_state_bytes(trainer.optimizer)
    row.memory_bytes = activations + grads + optim
    row.memory_detail = f"act {activations / 2**20:.0f} + grad {grads / 2**20:.1f} + adam {optim / 2**20:.1f}"


def run_rows(specs: list[str], args: argparse.Namespace, workdir: Path) -> list[Row]:
    """Build every row, warm it up, measure FLOPs and memory, then time interleaved rounds of steps."""
    rows = [
        make_row(spec, args, args.warmup + args.steps + 4, RunDir(workdir / str(i)))
        for i, spec in enumerate(specs)
    ]
    for row in rows:
        for _ in range(args.warmup):
            row.trainer.train_step(row.batch)
        measure_once(row)
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for row in rows:
            for _ in range(per_round):
                start = time.perf_counter()
                row.trainer.train_step(row.batch)
                efficiency.synchronize(row.trainer.device)
                row.times.append(time.perf_counter() - start)
    if getattr(args, "inference", False):
        time_inference(rows, args)
    return rows


def time_inference(rows: list[Row], args: argparse.Namespace) -> None:
    """Eval-mode, no-grad forwards of the batch, interleaved like the training steps. Memory: on CUDA the
    peak allocated during a forward; on CPU the bytes of the model's parameters and buffers (what a
    pruned model saves), since activations are freed as a forward goes."""
    for row in rows:
        model, device = row.trainer.model, row.trainer.device
        model.eval()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            with torch.no_grad():
                model(**row.batch)
            torch.cuda.synchronize(device)
            row.infer_memory_bytes = torch.cuda.max_memory_allocated(device)
        else:
            tensors = [*model.parameters(), *model.buffers()]
            row.infer_memory_bytes = sum(t.numel() * t.element_size() for t in tensors)
    per_round = max(1, args.steps // args.rounds)
    with torch.no_grad():
        for _ in range(args.rounds):
            for row in rows:
                for _ in range(per_round):
                    start = time.perf_counter()
                    row.trainer.model(**row.batch)
                    efficiency.synchronize(row.trainer.device)
                    row.infer_times.append(time.perf_counter() - start)
    for row in rows:
        row.trainer.model.train()


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Model, batch and timing options shared with scripts that build rows the same way."""
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="rte", help="the batch is the first --batch-size training examples")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds the steps are split into")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("override", nargs="*", help="Hydra overrides for every row, e.g. model.dropout=0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods", nargs="+", help="rows labelled by method name (default: lora peft-lora fft head)"
    )
    parser.add_argument("--row", action="append", default=[], help='"LABEL override ..." (repeatable)')
    parser.add_argument("--ref", help="row the ratios are relative to (default: the first)")
    parser.add_argument("--inference", action="store_true", help="also time eval-mode forwards of each row")
    parser.add_argument("--inference-ref", help="row the inference ratios are relative to (default: --ref)")
    add_common_args(parser)
    args = parser.parse_args()
    specs = [*(args.methods or ([] if args.row else ["lora", PEFT_ROW, "fft", "head"])), *args.row]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_rows(specs, args, Path(tmp))
    ref = next((r for r in rows if r.label == args.ref), None) if args.ref else rows[0]
    if ref is None:
        parser.error(f"--ref {args.ref!r} is not a row label; labels: {[r.label for r in rows]}")
    report(rows, ref, args)


def report(rows: list[Row], ref: Row, args: argparse.Namespace) -> None:
    device = ref.trainer.device
    batch = ref.batch
    if "pixel_values" in batch:
        shape = "x".join(str(n) for n in batch["pixel_values"].shape[1:])
        described = f"{args.batch_size} images of {shape}"
    else:
        described = f"{args.batch_size}x{int(batch['attention_mask'].shape[1])} tokens"
    ref_time = statistics.median(ref.times)
    print(
        f"\nmodel={args.model} task={args.task} batch={described} "
        f"device={device} threads={torch.get_num_threads()} steps={len(ref.times)} per row (median); "
        f"ratios to {ref.label}"
    )
    print(
        f"| row | trainable | step ms | samples/s | time / {ref.label} | GFLOP/step | FLOPs / {ref.label} "
        f"| GFLOP/s | % of peak | train mem MB | mem / {ref.label} | memory detail |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    out = []
    for row in rows:
        step = statistics.median(row.times)
        gflops = row.flops / step / 1e9
        peak = f"{100 * gflops / efficiency.CPU_PEAK_GFLOPS:.0f}%" if device.type == "cpu" else "n/a"
        mem_ratio = row.memory_bytes / ref.memory_bytes if ref.memory_bytes else float("nan")
        record = {
            "row": row.label,
            "trainable_params": row.trainer.trainable_count,
            "step_s": step,
            "samples_per_s": args.batch_size / step,
            "time_ratio": step / ref_time,
            "flops_per_step": row.flops,
            "flops_ratio": row.flops / ref.flops,
            "gflops_per_s": gflops,
            "train_memory_bytes": row.memory_bytes,
            "memory_ratio": mem_ratio,
        }
        out.append(record)
        print(
            f"| {row.label} | {row.trainer.trainable_count:,} | {1000 * step:.0f} "
            f"| {args.batch_size / step:.0f} | {step / ref_time:.3f} "
            f"| {row.flops / 1e9:.1f} | {row.flops / ref.flops:.3f} | {gflops:.0f} | {peak} "
            f"| {row.memory_bytes / 2**20:.0f} | {mem_ratio:.3f} | {row.memory_detail} |"
        )
    if device.type == "cpu":
        print(
            f"% of peak: achieved GFLOP/s over the {efficiency.CPU_PEAK_GFLOPS:.0f} GFLOP/s "
            "fp32 matmul ceiling measured on this 2-core machine"
        )
    if ref.infer_times:
        base = next((r for r in rows if r.label == args.inference_ref), ref)
        base_time = statistics.median(base.infer_times)
        kind = "peak allocated" if device.type == "cuda" else "weights"
        print(f"\ninference (eval mode, no grad, same batch); memory: {kind}; ratios to {base.label}")
        print(f"| row | forward ms | time / {base.label} | inference mem MB | mem / {base.label} |")
        print("|---|---:|---:|---:|---:|")
        for row, record in zip(rows, out, strict=True):
            step, mem = statistics.median(row.infer_times), row.infer_memory_bytes
            record.update({"inference_s": step, "inference_memory_bytes": mem})
            print(
                f"| {row.label} | {1000 * step:.0f} | {step / base_time:.3f} | {mem / 2**20:.1f} "
                f"| {mem / base.infer_memory_bytes:.3f} |"
            )
    if args.json:
        args.json.write_text(json.dumps({"ref": ref.label, "rows": out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
