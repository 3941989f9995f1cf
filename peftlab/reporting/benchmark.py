"""Side-by-side measurement of training steps: several rows (a method and its options) on the same model
and the same batch, each built exactly as a run builds it (``build_trainer``) and stepped by the training
loop's own ``Trainer.train_step`` (forward, backward, hooks, clipping, AdamW). Shared by
``scripts/bench.py``, ``scripts/spsft_memory.py`` and ``scripts/efficiency_tables.py``.

- Time: rounds of steps interleaved across rows, so machine noise hits every row alike; medians.
- FLOPs: torch's counter over one forward + backward (``train.efficiency.count_flops``).
- Memory, as the SPSFT paper defines "mem" (training memory minus inference memory): on CUDA the peak
  allocated during a training step minus the peak of a no-grad forward before it; on CPU the bytes a
  step adds (tensors autograd saves for backward, gradients, optimizer state), counted exactly, since a
  process's RSS cannot be split between rows that share one process. The weights are recorded apart.

A row is a label and Hydra overrides; ``@<state>`` brings the method into a state of its own before
timing (``Method.bench_state``: AFLoRA's ``@frozen``, every projection matrix frozen as after its
freezing schedule; Light-PEFT's ``@pruned``, trained on the batch until it has pruned); ``@loader`` times
the steps on the row's loader's batches in turn (with ``task.max_train_samples=N`` in the row: N / batch
size batches, e.g. to compare ``task.group_by_length=true``, whose batches hold less padding).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from peftlab.config import compose_config
from peftlab.errors import ConfigError
from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir
from peftlab.train import efficiency
from peftlab.train.optim import optimizer_state_bytes
from peftlab.train.trainer import Trainer

FLAG = "@"  # a row's flags: @loader, or a state of the row's method (Method.bench_states)
LOADER = "@loader"  # time the row on its loader's batches in turn (task.group_by_length: their padding)


@dataclass
class BenchSettings:
    """What every row shares: model, task, batch and how long to measure."""

    model: str = "minilm"
    task: str = "rte"
    batch_size: int = 32
    seq_len: int = 128
    steps: int = 20
    rounds: int = 4
    warmup: int = 3
    overrides: list[str] = field(default_factory=list)
    synthetic: bool = False  # fixed-length random token ids (seq_len long) instead of the task's examples
    flops: bool = True
    inference: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchSettings:
        return cls(
            model=args.model,
            task=args.task,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            steps=args.steps,
            rounds=args.rounds,
            warmup=args.warmup,
            overrides=list(args.override),
            synthetic=getattr(args, "synthetic", False),
            inference=getattr(args, "inference", False),
        )


@dataclass
class Row:
    label: str
    trainer: Trainer | None  # None once released (numbers kept)
    batch: dict[str, torch.Tensor]
    trainable: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    times: list[float] = field(default_factory=list)
    flops: int = 0
    memory_bytes: int = 0  # what a training step adds over inference ("mem")
    memory_detail: str = ""
    weights_bytes: int = 0  # parameters and buffers of the model as trained (after pruning)
    inference_peak: int = 0  # CUDA only
    infer_times: list[float] = field(default_factory=list)
    infer_memory_bytes: int = 0
    note: str = ""  # what the method says of its benchmark state (a pruned row: what it kept)
    batches: list[dict[str, torch.Tensor]] = field(default_factory=list)  # @loader: stepped in turn
    precision: str = "fp32"  # the autocast of the row's forwards (its % of the matching ceiling)
    turn: int = -1  # @loader: the index of the batch last stepped

    @property
    def padding(self) -> float | None:
        """Share of padding in the row's batches (text); None for images."""
        batches = self.batches or [self.batch]
        if not batches or "attention_mask" not in batches[0]:
            return None
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        return 1 - real / sum(b["attention_mask"].numel() for b in batches)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The batch of the next timed step: the fixed one, or (@loader) the loader's next."""
        if not self.batches:
            return self.batch
        self.turn = (self.turn + 1) % len(self.batches)
        return self.batches[self.turn]

    @property
    def train_total_bytes(self) -> int:
        """Training memory in all: the CUDA train-step peak, or on CPU weights + what a step adds."""
        base = self.inference_peak if self.device.type == "cuda" else self.weights_bytes
        return base + self.memory_bytes

    def release(self) -> None:
        """Drop the model, optimizer and batch; the numbers stay."""
        self.trainer, self.batch = None, {}
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, batch and timing options of scripts that build rows this way."""
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="rte", help="the batch is the first --batch-size training examples")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds the steps are split into")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--synthetic", action="store_true", help="random token ids of exactly --seq-len instead of examples"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("override", nargs="*", help="Hydra overrides for every row, e.g. model.dropout=0")


def make_row(spec: str, settings: BenchSettings, steps: int, run_dir: RunDir) -> Row:
    """A trainer built exactly as a run builds it, and its one batch (the first examples, or synthetic)."""
    label, *overrides = shlex.split(spec)
    whole_loader = LOADER in overrides
    states = [o[len(FLAG) :] for o in overrides if o.startswith(FLAG) and o != LOADER]
    overrides = [o for o in overrides if not o.startswith(FLAG)] or [f"method={label}"]
    cfg = compose_config(
        [
            f"model={settings.model}",
            f"task={settings.task}",
            "progress_bar=false",
            "measure.flops=false",
            f"schedule.batch_size={settings.batch_size}",
            f"schedule.max_seq_length={settings.seq_len}",
            f"schedule.max_steps={steps}",
            f"task.max_train_samples={settings.batch_size}",
            f"output_dir={run_dir.path}",
            *settings.overrides,
            *overrides,
        ]
    )
    trainer = build_trainer(cfg, run_dir)
    trainer.model.train()  # as Trainer.fit does: dropout on (from_pretrained returns eval mode)
    if settings.synthetic:
        batch = synthetic_batch(trainer, settings.batch_size, settings.seq_len)
    else:
        batch = next(iter(trainer.train_loader))
    batch = {k: v.to(trainer.device) for k, v in batch.items()}
    notes = [reach_state(trainer, state, batch) for state in states]
    row = Row(label, trainer, batch, trainer.trainable_count, trainer.device)
    row.precision = trainer.precision.name
    if whole_loader:
        row.batches = [{k: v.to(trainer.device) for k, v in b.items()} for b in trainer.train_loader]
    row.note = "; ".join(n for n in notes if n)
    row.inference_peak = inference_peak(trainer, batch)
    return row


def synthetic_batch(trainer: Trainer, batch_size: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids of exactly ``length`` (no padding), seeded: the same batch for every row of a
    model. Language models are trained on every position; classifiers get random labels."""
    head = trainer.task.model_head
    if head == "image":
        raise ConfigError("synthetic token ids are for text tasks; image batches already have a fixed size")
    generator = torch.Generator().manual_seed(seed)
    vocab = int(trainer.model.config.vocab_size)
    ids = torch.randint(1, vocab, (batch_size, length), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    num_labels = trainer.task.num_labels
    if head == "lm":
        batch["labels"] = ids.clone()
    elif num_labels == 1:
        batch["labels"] = torch.rand(batch_size, generator=generator)
    else:
        batch["labels"] = torch.randint(0, num_labels, (batch_size,), generator=generator)
    return batch


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


def reach_state(trainer: Trainer, state: str, batch: dict[str, torch.Tensor]) -> str:
    """The method's benchmark state ``state`` (``Method.bench_state``; its steps train on ``batch``), the
    optimizer rebuilt over what it trains then; returns the method's note for the row."""
    note = trainer.method.bench_state(state, trainer.state, lambda: trainer.train_step(batch))
    if trainer.state.rebuild_requested:
        trainer.apply_param_change()
    return note


def measure_once(row: Row, flops: bool = True) -> None:
    """FLOPs and memory of one training step, and the weights. The FLOP counter sees only matmul-like
    ops, so counting the whole step (optimizer included) gives the forward + backward FLOPs; on CPU the
    optimizer state is counted after the step, so no warm-up is needed for exact numbers."""
    trainer = row.trainer
    assert trainer is not None, "measure before release()"
    tensors = [*trainer.model.parameters(), *trainer.model.buffers()]
    row.weights_bytes = sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())
    counter = efficiency.flop_counter() if flops else contextlib.nullcontext()
    with counter:
        if row.device.type == "cuda":
            _cuda_step_memory(row)
        else:
            _cpu_step_memory(row)
    if flops:
        row.flops = int(counter.get_total_flops())  # type: ignore[union-attr]


def _cuda_step_memory(row: Row) -> None:
    trainer, device = row.trainer, row.device
    assert trainer is not None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    trainer.train_step(row.batch)
    torch.cuda.synchronize(device)
    row.memory_bytes = torch.cuda.max_memory_allocated(device) - row.inference_peak
    row.memory_detail = "cuda train-step peak - inference peak"


def _cpu_step_memory(row: Row) -> None:
    """Exact bytes a step adds on CPU: storages autograd saves (not the model's own), gradients, Adam."""
    trainer = row.trainer
    assert trainer is not None
    activations = efficiency.saved_tensor_bytes(trainer.model, lambda: trainer.train_step(row.batch))
    grads = sum(p.numel() * p.element_size() for p in trainer.trainable)
    optim = optimizer_state_bytes(trainer.optimizer)
    row.memory_bytes = activations + grads + optim
    row.memory_detail = f"act {activations / 2**20:.0f} + grad {grads / 2**20:.1f} + adam {optim / 2**20:.1f}"


def timed_step(row: Row) -> None:
    assert row.trainer is not None
    batch = row.next_batch()
    start = time.perf_counter()
    row.trainer.train_step(batch)
    efficiency.synchronize(row.device)
    row.times.append(time.perf_counter() - start)


def run_rows(specs: list[str], settings: BenchSettings, workdir: Path) -> list[Row]:
    """Build every row, warm it up, measure FLOPs and memory, then time interleaved rounds of steps."""
    steps = settings.warmup + settings.steps + 4
    rows = [make_row(spec, settings, steps, RunDir(workdir / str(i))) for i, spec in enumerate(specs)]
    for row in rows:
        for _ in range(settings.warmup):
            row.trainer.train_step(row.batch)  # type: ignore[union-attr]
        measure_once(row, settings.flops)
    per_round = max(1, settings.steps // settings.rounds) if settings.steps else 0
    for _ in range(settings.rounds if per_round else 0):
        for row in rows:
            for _ in range(per_round):
                timed_step(row)
    if settings.inference:
        time_inference(rows, settings)
    return rows


def run_rows_one_by_one(specs: list[str], settings: BenchSettings, workdir: Path) -> list[Row]:
    """Rows measured one after another, each released before the next is built: for models too large
    to hold several of at once. Memory and FLOPs are exact as in ``run_rows``; timed steps (if any) are
    consecutive, not interleaved."""
    rows = []
    for i, spec in enumerate(specs):
        rows.extend(run_rows([spec], settings, workdir / str(i)))
        rows[-1].release()
    return rows


def time_inference(rows: list[Row], settings: BenchSettings) -> None:
    """Eval-mode, no-grad forwards of the batch, interleaved like the training steps. Memory: on CUDA the
    peak allocated during a forward; on CPU the bytes of the model's parameters and buffers (what a
    pruned model saves), since activations are freed as a forward goes."""
    for row in rows:
        model = row.trainer.model  # type: ignore[union-attr]
        model.eval()
        if row.device.type == "cuda":
            torch.cuda.synchronize(row.device)
            torch.cuda.reset_peak_memory_stats(row.device)
            with torch.no_grad():
                model(**row.batch)
            torch.cuda.synchronize(row.device)
            row.infer_memory_bytes = torch.cuda.max_memory_allocated(row.device)
        else:
            row.infer_memory_bytes = row.weights_bytes
    per_round = max(1, settings.steps // settings.rounds)
    with torch.no_grad():
        for _ in range(settings.rounds):
            for row in rows:
                for _ in range(per_round):
                    start = time.perf_counter()
                    row.trainer.model(**row.batch)  # type: ignore[union-attr]
                    efficiency.synchronize(row.device)
                    row.infer_times.append(time.perf_counter() - start)
    for row in rows:
        row.trainer.model.train()  # type: ignore[union-attr]
