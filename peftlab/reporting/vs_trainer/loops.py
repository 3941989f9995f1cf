"""The three loops, each timed the same way: ``train_s`` is the wall time of the training epochs (data
loading, steps, logging; setup and evaluation excluded), ``step_times`` run from a batch in hand to the
optimizer step done (the boundaries of peftlab's ``Trainer._timed_step``)."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, get_linear_schedule_with_warmup
from transformers.trainer_callback import PrinterCallback

from peftlab.reporting.vs_trainer.common import FixedBatches, Settings, Shared, hf_model, new_peftlab_trainer

PEFTLAB, TRAINER, PLAIN = "peftlab", "hf_trainer", "plain_torch"


@dataclass
class LoopRun:
    """One loop's training run: what was timed, the losses of each step, the padded batch shapes and
    the dev metrics."""

    loop: str
    train_s: float = 0.0
    step_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    shapes: list[tuple[int, int]] = field(default_factory=list)  # (examples, padded length) per step
    metrics: dict[str, float] = field(default_factory=dict)
    trainable: int = 0
    optimizer: str = ""
    flops_per_step: int | None = None  # peftlab's own count of its first step (measure.flops)


def autocast(shared: Shared) -> contextlib.AbstractContextManager:
    bf16 = shared.cfg.schedule.precision == "bf16"
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def dev_metrics(model: torch.nn.Module, shared: Shared) -> dict[str, float]:
    """The dev metrics by peftlab's evaluation (its task and dev loaders) for every loop alike."""
    task, metrics = shared.trainer.task, {}
    for split, loader in shared.trainer.eval_loaders.items():
        with autocast(shared):
            for name, value in task.evaluate(model, loader, shared.trainer.device).items():
                metrics[task.metric_key(split, name)] = value
    return metrics


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
    flags = [k for k in ("foreach", "fused") if inner.defaults.get(k)]
    return f"{type(inner).__name__}({', '.join(flags) or 'for-loop'})"


def run_peftlab(settings: Settings, shared: Shared) -> LoopRun:
    """(a) peftlab: ``build_trainer`` then ``fit`` as a run does (with the fast options under
    ``fast_vs_default``); its own evaluation at the epoch end is timed apart and taken out."""
    trainer, folder = new_peftlab_trainer(settings.peftlab_side())
    run = LoopRun(PEFTLAB, trainable=trainer.trainable_count, optimizer=optimizer_name(trainer.optimizer))
    evaluate, train_step, eval_s = trainer.evaluate, trainer.train_step, [0.0]

    def timed_evaluate() -> dict[str, float]:
        start = time.perf_counter()
        metrics = evaluate()
        eval_s[0] += time.perf_counter() - start
        return metrics

    def recorded_step(batch: dict[str, torch.Tensor], total_targets: int | None = None) -> torch.Tensor:
        if not run.shapes:
            torch.manual_seed(settings.seed)  # as the other loops: at the first step, the loader started
        run.shapes.append(tuple(batch["input_ids"].shape))
        loss = train_step(batch, total_targets)
        run.losses.append(loss)
        return loss

    trainer.evaluate, trainer.train_step = timed_evaluate, recorded_step  # type: ignore[method-assign]
    with folder:
        start = time.perf_counter()
        trainer.fit()
        run.train_s = time.perf_counter() - start - eval_s[0]
    run.step_times, run.metrics = list(trainer.history.step_times), dict(trainer.history.last_eval or {})
    run.flops_per_step = trainer.history.flops_per_step
    run.losses = [float(x) for x in run.losses]
    return run


class RecordingTrainer(Trainer):
    """transformers' Trainer that trains on peftlab's order (``order``, unless None: its own sampler)
    and records each step's loss and batch shape."""

    def __init__(self, *args: Any, order: FixedBatches | None, run: LoopRun, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order, self.run = order, run

    def _get_train_sampler(self, train_dataset=None):
        return self.order if self.order is not None else super()._get_train_sampler(train_dataset)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.run.shapes.append(tuple(inputs["input_ids"].shape))
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.run.losses.append(loss)
        return loss


class StepTimer(TrainerCallback):
    """Times the Trainer's epochs and steps; reseeds torch's RNG at the first step, as the other loops
    do (the same dropout masks from there: a new epoch's loader, and peftlab's evaluation loader, draw
    one seed from it)."""

    def __init__(self, run: LoopRun, seed: int) -> None:
        self.run, self.seed, self.start = run, seed, 0.0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch_start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.run.train_s += time.perf_counter() - self.epoch_start

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            torch.manual_seed(self.seed)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.run.step_times.append(time.perf_counter() - self.start)


def trainer_arguments(settings: Settings, shared: Shared, output_dir: str) -> TrainingArguments:
    sched = shared.cfg.schedule
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=sched.batch_size,
        learning_rate=sched.lr,
        weight_decay=sched.weight_decay,
        adam_beta1=sched.adam_betas[0],
        adam_beta2=sched.adam_betas[1],
        adam_epsilon=sched.adam_eps,
        lr_scheduler_type="linear",
        warmup_steps=sched.warmup_ratio,
        max_grad_norm=sched.max_grad_norm or 0.0,
        num_train_epochs=sched.epochs,
        max_steps=sched.max_steps or -1,
        seed=settings.seed,
        bf16=sched.precision == "bf16",
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=sched.log_every_steps,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
    )


def run_hf_trainer(settings: Settings, shared: Shared) -> LoopRun:
    """(b) transformers' Trainer + huggingface peft on the same model, examples and (ungrouped) order."""
    import tempfile

    run = LoopRun(TRAINER)
    model = hf_model(shared)
    run.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    order = None if settings.group_by_length else FixedBatches(shared.epochs, flat=True)
    with tempfile.TemporaryDirectory(prefix="vs_trainer_hf_") as folder:
        trainer = RecordingTrainer(
            model=model,
            args=trainer_arguments(settings, shared, folder),
            train_dataset=shared.dataset,
            data_collator=shared.collate,
            callbacks=[StepTimer(run, settings.seed)],
            order=order,
            run=run,
        )
        trainer.remove_callback(PrinterCallback)  # its logs still run (loss to the host), unprinted
        trainer.train()
    run.optimizer = optimizer_name(trainer.optimizer)
    run.losses = [float(x) for x in run.losses]
    run.metrics = dev_metrics(model, shared)
    return run


def plain_optimizer(model: torch.nn.Module, shared: Shared) -> torch.optim.AdamW:
    """torch's AdamW with its defaults; no weight decay on biases and norm weights (the 1-D tensors)."""
    sched = shared.cfg.schedule
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": sched.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=sched.lr, betas=tuple(sched.adam_betas), eps=sched.adam_eps)


def run_plain(settings: Settings, shared: Shared) -> LoopRun:
    """(c) a hand-written loop: forward, backward, clipping, AdamW, transformers' linear schedule."""
    sched, device = shared.cfg.schedule, shared.trainer.device
    model = hf_model(shared)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = plain_optimizer(model, shared)
    warmup = math.ceil(sched.warmup_ratio * shared.total_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, shared.total_steps)
    run = LoopRun(PLAIN, trainable=sum(p.numel() for p in params), optimizer=optimizer_name(optimizer))
    loader = torch.utils.data.DataLoader(
        shared.dataset, batch_sampler=FixedBatches(shared.epochs), collate_fn=shared.collate
    )
    model.train()
    start = time.perf_counter()
    for _ in shared.epochs:
        for batch in loader:
            step_start = time.perf_counter()
            if not run.step_times:
                torch.manual_seed(settings.seed)
            run.shapes.append(tuple(batch["input_ids"].shape))
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast(shared):
                loss = model(**batch).loss
            loss.backward()
            if sched.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, sched.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            run.losses.append(loss.detach())
            run.step_times.append(time.perf_counter() - step_start)
            if len(run.step_times) == shared.total_steps:
                break
    run.train_s = time.perf_counter() - start
    run.losses = [float(x) for x in run.losses]
    run.metrics = dev_metrics(model, shared)
    return run


LOOPS = {PEFTLAB: run_peftlab, TRAINER: run_hf_trainer, PLAIN: run_plain}
