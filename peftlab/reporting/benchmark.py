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
  Each row is measured right after it is built, and on CUDA the bytes the rows built before it still
  hold are subtracted from its peaks: a row's memory is what it would be alone.
- Forwards outside the training step (the inference peak and timings) run in the row's autocast
  (``Trainer.autocast``), as its training and evaluation forwards do.

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
from omegaconf import DictConfig

from peftlab.config import compose_config
from peftlab.errors import ConfigError
from peftlab.models.build import resolve_device
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
    resident_before: int = 0  # CUDA bytes other rows held when this one was built (not its own)
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
        base = self.inference_peak if measures_cuda_memory(self.device) else self.weights_bytes
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


def measures_cuda_memory(device: torch.device) -> bool:
    """Whether a row's memory comes from CUDA's allocator (peaks); else it is counted on the CPU."""
    return device.type == "cuda"


def resident_bytes(device: torch.device) -> int:
    """CUDA bytes allocated now (after freeing garbage); 0 where memory is counted on the CPU."""
    if not measures_cuda_memory(device):
        return 0
    gc.collect()
    return torch.cuda.memory_allocated(device)


def row_config(overrides: list[str], settings: BenchSettings, steps: int, run_dir: RunDir) -> DictConfig:
    """The run config of a row: the shared settings, then the row's own overrides."""
    return compose_config(
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


def make_row(spec: str, settings: BenchSettings, steps: int, run_dir: RunDir) -> Row:
    """A trainer built exactly as a run builds it, and its one batch (the first examples, or synthetic)."""
    label, *overrides = shlex.split(spec)
    whole_loader = LOADER in overrides
    states = [o[len(FLAG) :] for o in overrides if o.startswith(FLAG) and o != LOADER]
    overrides = [o for o in overrides if not o.startswith(FLAG)] or [f"method={label}"]
    cfg = row_config(overrides, settings, steps, run_dir)
    resident = resident_bytes(resolve_device(cfg.model.device))
    trainer = build_trainer(cfg, run_dir)
    trainer.model.train()  # as Trainer.fit does: dropout on (from_pretrained returns eval mode)
    if settings.synthetic:
        batch = synthetic_batch(trainer, settings.batch_size, settings.seq_len)
    else:
        batch = next(iter(trainer.train_loader))
    batch = {k: v.to(trainer.device) for k, v in batch.items()}
    notes = [reach_state(trainer, state, batch) for state in states]
    row = Row(label, trainer, batch, trainer.trainable_count, trainer.device, resident_before=resident)
    row.precision = trainer.precision.name
    if whole_loader:
        row.batches = [{k: v.to(trainer.device) for k, v in b.items()} for b in trainer.train_loader]
    row.note = "; ".join(n for n in notes if n)
    row.inference_peak = inference_peak(row)
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


def inference_peak(row: Row) -> int:
    """CUDA peak of a no-grad forward of the row's batch before any training step, in the row's autocast
    (the SPSFT paper's mem_M: model + inference activations, no gradients or optimizer state yet),
    without what other rows hold; 0 on CPU."""
    if not measures_cuda_memory(row.device):
        return 0
    return _forward_peak(row)


def _forward_peak(row: Row) -> int:
    """CUDA peak of one no-grad forward of the row's batch, less what other rows hold."""
    trainer, device = row.trainer, row.device
    assert trainer is not None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), trainer.autocast():
        trainer.model(**row.batch)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - row.resident_before


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
        if measures_cuda_memory(row.device):
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
    row.memory_bytes = torch.cuda.max_memory_allocated(device) - row.resident_before - row.inference_peak
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
    """Build each row, warm it up and measure its FLOPs and memory (before the next row is built, so
    its peaks hold nothing of later rows), then time interleaved rounds of steps."""
    steps = settings.warmup + settings.steps + 4
    rows = []
    for i, spec in enumerate(specs):
        row = make_row(spec, settings, steps, RunDir(workdir / str(i)))
        for _ in range(settings.warmup):
            row.trainer.train_step(row.batch)  # type: ignore[union-attr]
        measure_once(row, settings.flops)
        if settings.inference:
            measure_inference_memory(row)
        rows.append(row)
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


def measure_inference_memory(row: Row) -> None:
    """Memory of an eval-mode, no-grad forward of the trained row: on CUDA the peak allocated during
    it (less what other rows hold); on CPU the bytes of the model's parameters and buffers (what a
    pruned model saves), since activations are freed as a forward goes."""
    if not measures_cuda_memory(row.device):
        row.infer_memory_bytes = row.weights_bytes
        return
    model = row.trainer.model  # type: ignore[union-attr]
    model.eval()
    row.infer_memory_bytes = _forward_peak(row)
    model.train()


def time_inference(rows: list[Row], settings: BenchSettings) -> None:
    """Eval-mode, no-grad forwards of the batch in each row's autocast, interleaved like the training
    steps."""
    for row in rows:
        row.trainer.model.eval()  # type: ignore[union-attr]
    per_round = max(1, settings.steps // settings.rounds)
    with torch.no_grad():
        for _ in range(settings.rounds):
            for row in rows:
                trainer = row.trainer
                assert trainer is not None
                for _ in range(per_round):
                    start = time.perf_counter()
                    with trainer.autocast():
                        trainer.model(**row.batch)
                    efficiency.synchronize(row.device)
                    row.infer_times.append(time.perf_counter() - start)
    for row in rows:
        row.trainer.model.train()  # type: ignore[union-attr]
