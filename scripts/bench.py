"""Side-by-side training-step benchmark: several methods, the same model and the same batch, one run.

    python scripts/bench.py                       # MiniLM, RTE batch of 32 x <=128 tokens
    python scripts/bench.py --model tiny_bert --steps 5 --methods lora head

Every row runs the training loop's own step (``Trainer._train_step``: forward, backward, hooks,
clipping, AdamW) on a freshly built model, so the numbers are what a run pays. Rounds of steps are
interleaved across methods so that machine noise hits all rows alike. ``peft-lora`` is huggingface/peft's
LoRA with the same rank, alpha, dropout and targets as ours, trained by the same loop.

Columns: median step time and its ratio to our LoRA; FLOPs per step (torch's counter, forward and
backward) and the achieved fraction of the machine's fp32 peak; memory: on CUDA the peak allocated
during a step above the resident model; on CPU the bytes a step adds (tensors autograd saves for the
backward pass, gradients, optimizer state), counted exactly, since a process's RSS cannot be split
between methods that share one process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftlab.config import compose_config  # noqa: E402
from peftlab.experiment import seed_everything  # noqa: E402
from peftlab.methods.base import Method, MethodConfig, build_method  # noqa: E402
from peftlab.models import build_model, resolve_device  # noqa: E402
from peftlab.registry import TASKS  # noqa: E402
from peftlab.train import efficiency  # noqa: E402
from peftlab.train.loop import Trainer  # noqa: E402
from peftlab.train.optim import optimizer_state_bytes  # noqa: E402
from peftlab.train.run_dir import RunDir  # noqa: E402

PEFT_ROW = "peft-lora"


class PeftLora(Method):
    """huggingface/peft LoRA on the backbone, configured like our ``lora`` method (bench peer only)."""

    def __init__(self, ours: MethodConfig) -> None:
        super().__init__(ours)

    def attach(self, model: torch.nn.Module) -> None:
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        peft_cfg = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            use_rslora=cfg.rslora,
            target_modules=cfg.target_modules,
        )
        model.backbone = get_peft_model(model.backbone, peft_cfg)
        model.head.requires_grad_(True)

    @property
    def name(self) -> str:
        return PEFT_ROW


@dataclass
class Row:
    name: str
    trainer: Trainer
    times: list[float] = field(default_factory=list)
    flops: int = 0
    memory_bytes: int = 0
    memory_detail: str = ""


def saved_activation_bytes(trainer: Trainer, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for backward in one step, parameters excluded."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in trainer.model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer._train_step(batch)
    return sum(seen.values())


def make_row(name: str, args: argparse.Namespace, batch_count: int, run_dir: RunDir) -> tuple[Row, dict]:
    method_name = "lora" if name == PEFT_ROW else name
    cfg = compose_config(
        [
            f"model={args.model}",
            f"task={args.task}",
            f"method={method_name}",
            "progress_bar=false",
            f"schedule.batch_size={args.batch_size}",
            f"schedule.max_seq_length={args.seq_len}",
            f"output_dir={run_dir.path}",
            *args.override,
        ]
    )
    task = TASKS.get(cfg.task.name)(cfg.task, cfg.data_root)
    seed_everything(cfg.seed)
    model, tokenizer = build_model(cfg.model, task.num_labels)
    ours = build_method(cfg.method)
    method = PeftLora(ours.config) if name == PEFT_ROW else ours
    method.setup(model)
    device = resolve_device(cfg.model.device)
    model.to(device).train()
    examples = task.load_split("train")[: args.batch_size]
    loader = task.build_loader(examples, tokenizer, args.batch_size, args.seq_len)
    batch = {k: v.to(device) for k, v in next(iter(loader)).items()}
    cfg.schedule.max_steps = batch_count
    trainer = Trainer(cfg, model, method, task, [batch] * batch_count, {}, device, run_dir)  # type: ignore[arg-type]
    return Row(name, trainer), batch


def measure_once(row: Row, batch: dict[str, torch.Tensor], device: torch.device) -> None:
    """FLOPs and memory of one step (after warm-up, so optimizer state exists)."""
    trainer = row.trainer
    row.flops = efficiency.count_flops(lambda: trainer._forward_backward(batch))
    trainer.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        trainer._train_step(batch)
        torch.cuda.synchronize(device)
        row.memory_bytes = torch.cuda.max_memory_allocated(device) - base
        row.memory_detail = "cuda peak above resident"
    else:
        activations = saved_activation_bytes(trainer, batch)
        grads = sum(p.numel() * p.element_size() for p in trainer.trainable)
        optim = optimizer_state_bytes(trainer.optimizer)
        row.memory_bytes = activations + grads + optim
        row.memory_detail = (
            f"act {activations / 2**20:.0f} + grad {grads / 2**20:.1f} + adam {optim / 2**20:.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="rte", help="the batch is the first --batch-size training examples")
    parser.add_argument("--methods", nargs="+", default=["lora", PEFT_ROW, "fft", "head"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds the steps are split into")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("override", nargs="*", help="extra Hydra overrides, e.g. method.rank=16")
    args = parser.parse_args()
    if "lora" not in args.methods:
        parser.error("--methods must include lora: ratios are given relative to it")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    total = args.warmup + args.steps + 4
    with tempfile.TemporaryDirectory() as tmp:
        rows, batches = [], []
        for name in args.methods:
            row, batch = make_row(name, args, total, RunDir(Path(tmp) / name))
            rows.append(row)
            batches.append(batch)
        device = rows[0].trainer.device
        for row, batch in zip(rows, batches, strict=True):
            for _ in range(args.warmup):
                row.trainer._train_step(batch)
            measure_once(row, batch, device)
        per_round = max(1, args.steps // args.rounds)
        for _ in range(args.rounds):
            for row, batch in zip(rows, batches, strict=True):
                for _ in range(per_round):
                    start = time.perf_counter()
                    row.trainer._train_step(batch)
                    efficiency.synchronize(device)
                    row.times.append(time.perf_counter() - start)
    tokens = int(batches[0]["attention_mask"].numel())
    report(rows, args, device, tokens)


def report(rows: list[Row], args: argparse.Namespace, device: torch.device, tokens: int) -> None:
    ref = next(r for r in rows if r.name == "lora")
    ref_time = statistics.median(ref.times)
    print(
        f"\nmodel={args.model} task={args.task} batch={args.batch_size}x{tokens // args.batch_size} tokens "
        f"device={device} threads={torch.get_num_threads()} steps={len(ref.times)} per method (median)"
    )
    header = (
        "| method | trainable | step ms | time / lora | GFLOP/step | GFLOP/s | % of peak "
        "| train mem MB | mem / lora | memory detail |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    out = []
    for row in rows:
        step = statistics.median(row.times)
        gflops = row.flops / step / 1e9
        peak = f"{100 * gflops / efficiency.CPU_PEAK_GFLOPS:.0f}%" if device.type == "cpu" else "n/a"
        record = {
            "method": row.name,
            "trainable_params": row.trainer.trainable_count,
            "step_s": step,
            "time_ratio_to_lora": step / ref_time,
            "flops_per_step": row.flops,
            "gflops_per_s": gflops,
            "train_memory_bytes": row.memory_bytes,
            "memory_ratio_to_lora": row.memory_bytes / ref.memory_bytes,
        }
        out.append(record)
        print(
            f"| {row.name} | {row.trainer.trainable_count:,} | {1000 * step:.0f} | {step / ref_time:.3f} "
            f"| {row.flops / 1e9:.1f} | {gflops:.0f} | {peak} | {row.memory_bytes / 2**20:.0f} "
            f"| {row.memory_bytes / ref.memory_bytes:.3f} | {row.memory_detail} |"
        )
    if device.type == "cpu":
        print(
            f"% of peak: achieved GFLOP/s over the {efficiency.CPU_PEAK_GFLOPS:.0f} GFLOP/s "
            "fp32 matmul ceiling measured on this 2-core machine"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
