"""The training loop. One loop for every method; methods act only through their hooks.

The hot path per step is: forward, (extra loss), backward, after_backward hook, grad clipping,
optimizer step, after_step hook. No Python loop over parameters and no host sync except at logging
points (every ``log_every_steps``) and evaluation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from peftlab import distributed
from peftlab.blocks.params import count_parameters, trainable_named_parameters
from peftlab.errors import ConfigError, TrainingDiverged
from peftlab.methods.base import Method, TrainState
from peftlab.tasks.base import Task
from peftlab.train import efficiency
from peftlab.train.checkpoint import load_checkpoint, save_checkpoint
from peftlab.train.optim import build_optimizer, lr_factor, rebuild_optimizer, set_lr
from peftlab.train.run_dir import RunDir

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
SCHEDULER_STEPS = ("step", "epoch")


@dataclass
class History:
    """What the loop accumulates for results.json."""

    step_times: list[float] = field(default_factory=list)  # step k took step_times[k - 1] seconds
    trainable_param_steps: int = 0  # sum over steps of the trainable count (for the average)
    adapter_param_steps: int = 0  # the same without the task head (the AFLoRA paper's #Params)
    samples: int = 0
    tokens: int = 0  # non-padding tokens trained on (text tasks)
    train_time_s: float = 0.0  # sum of step times, evaluation excluded
    best_eval: dict[str, float] | None = None
    best_step: int | None = None
    last_eval: dict[str, float] | None = None
    last_eval_step: int | None = None
    flops_per_step: int | None = None


@dataclass
class Progress:
    """Where the loop is inside the current epoch and the loss window since the last log line: what a
    checkpoint needs, besides the model and optimizer, to continue with the same batches and log."""

    loss_sum: torch.Tensor  # on the device: summing needs no host sync
    window: int = 0
    consumed: int = 0  # batches of this epoch seen so far
    epoch_generator: torch.Tensor | None = None  # the shuffling generator's state when this epoch began

    def start_epoch(self, generator: torch.Generator | None, resuming: bool) -> None:
        """The data order of this epoch comes from the generator's state now (resuming mid-epoch: the
        checkpoint's state)."""
        if generator is not None:
            if resuming and self.epoch_generator is not None:
                generator.set_state(self.epoch_generator)
            self.epoch_generator = generator.get_state()
        self.consumed = 0

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.window += 1

    def reset_window(self) -> None:
        self.loss_sum.zero_()
        self.window = 0

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "epoch_generator": self.epoch_generator,
            "consumed": self.consumed,
            "loss_sum": float(self.loss_sum),
            "window": self.window,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        self.epoch_generator, self.consumed, self.window = (
            saved["epoch_generator"],
            saved["consumed"],
            saved["window"],
        )
        self.loss_sum.fill_(saved["loss_sum"])


class Trainer:
    def __init__(
        self,
        cfg: DictConfig,
        model: torch.nn.Module,
        method: Method,
        task: Task,
        train_loader: DataLoader,
        eval_loaders: dict[str, DataLoader],
        device: torch.device,
        run_dir: RunDir,
    ) -> None:
        self.cfg, self.sched = cfg, cfg.schedule
        if self.sched.precision not in PRECISIONS:
            raise ConfigError(
                f"schedule.precision={self.sched.precision!r}; allowed: {', '.join(PRECISIONS)}"
            )
        if self.sched.scheduler_step not in SCHEDULER_STEPS:
            raise ConfigError(
                f"schedule.scheduler_step={self.sched.scheduler_step!r}; "
                f"allowed: {', '.join(SCHEDULER_STEPS)}"
            )
        self.model, self.method, self.task = model, method, task
        self.train_loader, self.eval_loaders = train_loader, eval_loaders
        self.device, self.run_dir = device, run_dir
        steps_per_epoch = len(train_loader)
        scheduled = self.sched.max_steps or steps_per_epoch * self.sched.epochs
        # a method's separate first run ahead of the scheduled one (Light-PEFT's official estimation run)
        self.first_run = method.first_run_steps(scheduled)
        total = scheduled + self.first_run
        self.state = TrainState(model, step=0, total_steps=total, steps_per_epoch=steps_per_epoch)
        self.warmup_steps = math.ceil(self.sched.warmup_ratio * scheduled)
        self.eval_every = self.sched.eval_every_steps or steps_per_epoch
        self.history = History()
        self.header: dict[str, Any] = {}  # what the run is (method, task, seed, ...), for results.json
        self._set_up_optimizer(None)
        self.trainable_start = self.trainable_count

    # -- optimizer --------------------------------------------------------------------------------
    def _set_up_optimizer(self, old: torch.optim.Optimizer | None) -> None:
        self.forward_model = self._data_parallel()
        groups = self.method.param_groups(self.model)
        self.optimizer = (
            build_optimizer(groups, self.sched) if old is None else rebuild_optimizer(old, groups, self.sched)
        )
        self.trainable = [p for _, p in trainable_named_parameters(self.model)]
        self.trainable_count = sum(p.numel() for p in self.trainable)
        self.trainable_head_count = sum(p.numel() for p in self.model.head.parameters() if p.requires_grad)

    def _data_parallel(self) -> torch.nn.Module:
        """The model the training forward goes through: DDP around it under torchrun (rebuilt whenever
        the trained parameters change), the model itself in one process."""
        if not distributed.enabled():
            return self.model
        device_ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids)

    def apply_param_change(self) -> None:
        """A hook froze, unfroze or replaced parameters: rebuild the optimizer over what is trained now."""
        self.state.rebuild_requested = False
        before = self.trainable_count
        self._set_up_optimizer(self.optimizer)
        log.info(
            "step %d: trainable params %d -> %d, optimizer rebuilt",
            self.state.step,
            before,
            self.trainable_count,
        )

    def restart(self) -> None:
        """The method's first run is over: a fresh optimizer (no Adam moments) over what is trained now;
        the LR schedule starts again (``lr_factor``), as a new run on the (pruned) model would."""
        self.state.rebuild_requested = False
        self._set_up_optimizer(None)
        log.info("step %d: first run over, fresh optimizer and LR schedule", self.state.step)

    def lr_factor(self) -> float:
        """Warmup then the decay (``schedule.lr_scheduler``) over the current run: the method's first
        run, or the scheduled one.
        ``scheduler_step=epoch`` advances it once per epoch (SPSFT's code: the LR barely decays)."""
        step, first = self.state.step, self.first_run
        start, length = (0, first) if step < first else (first, self.state.total_steps - first)
        t, sched = step - start, self.sched
        kind = sched.get("lr_scheduler", "linear")  # (configs saved before it existed)
        if sched.scheduler_step == "epoch":
            t //= self.state.steps_per_epoch
            if kind == "cosine":  # CosineAnnealingLR(T_max = epochs), stepped once per epoch
                length = math.ceil(length / self.state.steps_per_epoch)
        warmup = math.ceil(sched.warmup_ratio * length)
        return lr_factor(t, length, warmup, kind, sched.get("min_lr", 0.0) / sched.lr)

    # -- one step ---------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast of a forward pass when ``schedule.precision=bf16``; nothing for fp32."""
        if self.sched.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def forward_backward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.autocast():
            loss = self.forward_model(**batch).loss
            extra = self.method.extra_loss(self.model, batch)
            if extra is not None:
                loss = loss + extra
        loss.backward()
        return loss.detach()

    def train_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        state = self.state
        set_lr(self.optimizer, self.lr_factor())
        if state.step == 0 and self.cfg.measure.flops:
            loss_box: list[torch.Tensor] = []
            self.history.flops_per_step = efficiency.count_flops(
                lambda: loss_box.append(self.forward_backward(batch))
            )
            loss = loss_box[0]
        else:
            loss = self.forward_backward(batch)
        self.method.after_backward(state)
        if self.sched.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.sched.max_grad_norm, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        self.method.after_step(state)
        if self.first_run and state.step == self.first_run:
            self.restart()
        elif state.rebuild_requested:
            self.apply_param_change()
        return loss

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, resume_from: Path | None = None) -> History:
        """Train to ``total_steps``; from a checkpoint of this run when ``resume_from`` is given."""
        state = self.state
        progress = self._begin(resume_from)
        generator = getattr(getattr(self.train_loader, "sampler", None), "generator", None)
        skip = progress.consumed  # batches of the current epoch already trained on (when resuming)
        self.model.train()
        bar = tqdm(
            total=state.total_steps,
            initial=state.step,
            desc=f"{self.method.name}/{self.cfg.task.name}",
            disable=not self.cfg.progress_bar,
            dynamic_ncols=True,
        )
        while state.step < state.total_steps:
            progress.start_epoch(generator, resuming=skip > 0)
            for batch in self.train_loader:
                progress.consumed += 1
                if skip:
                    skip -= 1
                    continue
                progress.add(self._timed_step(batch))
                bar.update(1)
                self._after_step(progress, bar)
                if state.step >= state.total_steps:
                    break
        bar.close()
        self.method.on_train_end(state)
        if state.rebuild_requested:
            self.apply_param_change()
        return self.history

    def _begin(self, resume_from: Path | None) -> Progress:
        """Where training starts: step 0, or the checkpoint's step with its data order and loss window."""
        progress = Progress(loss_sum=torch.zeros((), device=self.device))
        if resume_from is not None:
            progress.restore(load_checkpoint(self, resume_from))
            self.run_dir.truncate_metrics(after_step=self.state.step)
            log.info("resumed from %s at step %d", resume_from, self.state.step)
        log.info(
            "training %d steps (%d per epoch, warmup %d), %d trainable params",
            self.state.total_steps,
            self.state.steps_per_epoch,
            self.warmup_steps,
            self.trainable_count,
        )
        efficiency.reset_peak_memory(self.device)
        return progress

    def _timed_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimizer step on ``batch`` (this rank's share), timed and counted in the history."""
        history = self.history
        start = time.perf_counter()
        batch = distributed.shard(batch)
        if "attention_mask" in batch:  # counted on the host copy: no device sync
            history.tokens += int(batch["attention_mask"].sum()) * distributed.world_size()
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        history.trainable_param_steps += self.trainable_count  # what this step trains
        history.adapter_param_steps += self.trainable_count - self.trainable_head_count
        loss = self.train_step(batch)
        efficiency.synchronize(self.device)
        elapsed = time.perf_counter() - start
        history.train_time_s += elapsed
        history.step_times.append(elapsed)
        history.samples += len(batch["labels"]) * distributed.world_size()
        return loss

    def _after_step(self, progress: Progress, bar: tqdm) -> None:
        """Log the loss window, evaluate and checkpoint when their step comes."""
        step, last = self.state.step, self.state.step == self.state.total_steps
        if step % self.sched.log_every_steps == 0 or last:
            bar.set_postfix(
                loss=f"{self._log_train(progress.loss_sum / progress.window, progress.window):.4f}"
            )
            progress.reset_window()
        if step % self.eval_every == 0 or last:
            self.evaluate()
        every = self.cfg.checkpoint.every_steps
        if every and step % every == 0 and not last and distributed.is_main():
            save_checkpoint(self, progress.to_checkpoint(), self.cfg.checkpoint.keep)

    def _log_train(self, mean_loss_tensor: torch.Tensor, window: int) -> float:
        mean_loss = float(distributed.all_reduce_mean(mean_loss_tensor.detach().clone()))
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(
                f"train loss is {mean_loss} over steps {self.state.step - window + 1}..{self.state.step}; "
                f"stopping (lower schedule.lr, set schedule.max_grad_norm, or check the data)"
            )
        times = self.history.step_times[-window:]
        self.run_dir.log_metrics(
            {
                "step": self.state.step,
                "epoch": round(self.state.epoch, 4),
                "train_loss": mean_loss,
                "lr": self.optimizer.param_groups[0]["lr"],
                "trainable_params": self.trainable_count,
                "step_time_s": sum(times) / len(times) if times else None,
            }
        )
        return mean_loss

    def evaluate(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for split, loader in self.eval_loaders.items():
            with self.autocast():
                scores = self.task.evaluate(self.model, loader, self.device)
            for name, value in scores.items():
                metrics[self.task.metric_key(split, name)] = value
            if self.task.last_predictions:  # generation tasks: what the model wrote, next to the reference
                self.run_dir.write_jsonl(f"predictions_{split}.jsonl", self.task.last_predictions)
        loss_keys = [k for k in metrics if k.startswith("loss")]
        if any(not math.isfinite(metrics[k]) for k in loss_keys):
            raise TrainingDiverged(f"eval loss is not finite at step {self.state.step}: {metrics}")
        history = self.history
        history.last_eval, history.last_eval_step = metrics, self.state.step
        best_by = self.task.best_by
        in_first_run = 0 < self.state.step <= self.first_run  # not the scheduled run's model (unpruned)
        if not in_first_run and (history.best_eval is None or metrics[best_by] > history.best_eval[best_by]):
            history.best_eval, history.best_step = metrics, self.state.step
        self.run_dir.log_metrics(
            {
                "step": self.state.step,
                "epoch": round(self.state.epoch, 4),
                **{f"eval_{k}": v for k, v in metrics.items()},
            }
        )
        log.info("step %d eval: %s", self.state.step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return metrics

    def summary(self, wall_time_s: float) -> dict[str, Any]:
        history, state = self.history, self.state
        # the first step carries warm-up (and the FLOP counter): left out of the median
        median_step = efficiency.median(history.step_times[1:])
        train_time = history.train_time_s
        peak, peak_kind = efficiency.peak_memory(self.device)
        achieved = (
            history.flops_per_step / median_step / 1e9 if history.flops_per_step and median_step else None
        )
        return {
            "final_eval": history.last_eval,
            "best_eval": history.best_eval,
            "best_step": history.best_step,
            "main_metric": self.task.main_metric,
            "best_by": self.task.best_by,
            "steps": state.step,
            "epochs": round(state.epoch, 4),
            "trainable_params": {
                "start": self.trainable_start,
                "end": self.trainable_count,
                "mean_over_steps": history.trainable_param_steps / max(state.step, 1),
                "mean_over_steps_without_head": history.adapter_param_steps / max(state.step, 1),
            },
            "total_params": count_parameters(self.model),
            "train_time_s": history.train_time_s,
            "wall_time_s": wall_time_s,
            "median_step_time_s": median_step,
            "samples_per_s": history.samples / train_time if train_time else None,
            "tokens_per_s": history.tokens / train_time if history.tokens and train_time else None,
            "peak_memory_bytes": peak,
            "peak_memory_kind": peak_kind,
            "flops_per_step": history.flops_per_step,
            "achieved_gflops": achieved,
            "method_report": self.method.report(state, history.step_times, self.run_dir.path),
            "fraction_of_cpu_peak": achieved / efficiency.CPU_PEAK_GFLOPS
            if achieved and self.device.type == "cpu"
            else None,
        }
