"""The training loop. One loop for every method; methods act only through their hooks.

The hot path per step is: forward, (extra loss), backward (once per micro-batch: ``accumulate``),
after_backward hook, grad clipping, optimizer step, after_step hook. No Python loop over parameters and
no host sync except at logging points (every ``log_every_steps``), evaluation and fp16's overflow check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from peftlab import distributed
from peftlab.blocks.params import trainable_named_parameters
from peftlab.config import RunConfig
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, TrainState
from peftlab.tasks import batching
from peftlab.tasks.base import Task
from peftlab.train import accumulate, efficiency, evaluation, summary
from peftlab.train.history import History, Progress
from peftlab.train.hooks import refuse_step_hooks
from peftlab.train.optim import build_optimizer, lr_factor, rebuild_optimizer, set_lr, warmup_used
from peftlab.train.precision import Precision, base_dtype, keep_trained_fp32
from peftlab.train.recompute import enable_activation_checkpointing
from peftlab.train.rng import gathered_rng_state, rng_state, set_rng_state
from peftlab.train.stop import StopSignals

log = logging.getLogger(__name__)

COMPILE_BACKEND = "inductor"  # schedule.compile=true: torch.compile's default backend (tests use "eager")


class RunRecord(Protocol):
    """Where the loop records a run (``peftlab.run.folder.RunDir``): it names the files and writes them."""

    path: Path

    def log_metrics(self, row: dict[str, Any]) -> None: ...
    def truncate_metrics(self, after_step: int) -> None: ...
    def write_predictions(self, split: str, rows: list[dict[str, Any]]) -> None: ...
    def write_file(self, name: str, content: bytes) -> None: ...
    def write_checkpoint(self, step: int, payload: dict[str, Any], keep: int) -> Path | None: ...


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        model: torch.nn.Module,
        method: Method,
        task: Task,
        train_loader: DataLoader,
        eval_loaders: dict[str, DataLoader],
        device: torch.device,
        run_dir: RunRecord,
    ) -> None:
        self.cfg, self.sched = cfg, cfg.schedule
        self.model, self.method, self.task = model, method, task
        self.train_loader, self.eval_loaders = train_loader, eval_loaders
        self.device, self.run_dir = device, run_dir
        sched = self.sched
        self.precision = Precision(sched.precision, base_dtype(model), device, sched.matmul_precision)
        for loader in [train_loader, *eval_loaders.values()]:
            batching.device_loading(loader, device, self.sched.loader_workers)
        if self.sched.activation_checkpointing:
            enable_activation_checkpointing(model)
        steps_per_epoch = len(train_loader)
        scheduled = self.sched.max_steps or steps_per_epoch * self.sched.epochs
        method.check_schedule(scheduled, steps_per_epoch)
        # a method's separate first run ahead of the scheduled one (Light-PEFT's official estimation run)
        self.first_run = method.first_run_steps(scheduled)
        total = scheduled + self.first_run
        self.state = TrainState(model, step=0, total_steps=total, steps_per_epoch=steps_per_epoch)
        self.warmup_steps = warmup_used(math.ceil(self.sched.warmup_ratio * scheduled), scheduled)
        self.eval_every = self.sched.eval_every_steps or steps_per_epoch
        self.history = History()
        self.timer = efficiency.StepTimer(device)  # step times, read at logging points (no sync per step)
        self.step_lr = 0.0  # the LR of the first param group in the last step (what metrics.jsonl logs)
        self.sharded = False  # FSDP has sharded the model (distributed.strategy=fsdp under torchrun)
        self.wrapped = False  # DDP has wrapped the model (and synced it across ranks) once
        self.header: dict[str, Any] = {}  # what the run is (method, task, seed, ...), for results.json
        self._set_up_optimizer(None)
        self.trainable_start = self.trainable_count

    # -- optimizer --------------------------------------------------------------------------------
    def _set_up_optimizer(self, old: torch.optim.Optimizer | None) -> None:
        keep_trained_fp32(self.model)  # also what a hook unfroze: fp32 weights and Adam state
        self.forward_model = self._data_parallel()
        if self.sched.compile:
            refuse_step_hooks(self.method, "schedule.compile=true", "compiled", "schedule.compile=false")
            self.forward_model = torch.compile(self.forward_model, backend=COMPILE_BACKEND)
        groups = self.method.param_groups(self.model)
        self.optimizer = (
            build_optimizer(groups, self.sched) if old is None else rebuild_optimizer(old, groups, self.sched)
        )
        self.trainable = [p for _, p in trainable_named_parameters(self.model)]
        self.trainable_count = sum(p.numel() for p in self.trainable)
        self.trainable_head_count = sum(p.numel() for p in self.model.head.parameters() if p.requires_grad)

    def _data_parallel(self) -> torch.nn.Module:
        """The model the training forward goes through: DDP around it under torchrun (rebuilt whenever
        the trained parameters change), the model itself sharded in place (FSDP, once), or the model
        itself in one process."""
        if not distributed.enabled():
            return self.model
        if self.cfg.distributed.strategy == "fsdp":
            if not self.sharded:
                fsdp, reason = "distributed.strategy=fsdp", "FSDP holds only shards"
                refuse_step_hooks(self.method, fsdp, reason, "distributed.strategy=ddp")
                distributed.fully_shard_model(self.model)  # built on the CPU: sharded, then moved
                self.model.to(self.device)
                self.sharded = True
            return self.model
        device_ids = [self.device] if self.device.type == "cuda" else None
        # buffers are equal on every rank (built from the seed, synced once at the first wrap) and no
        # forward changes them: no broadcast per step (ELoRA's projections); a rebuild re-syncs nothing
        first, self.wrapped = not self.wrapped, True
        return DistributedDataParallel(
            self.model, device_ids=device_ids, forward_sync_buffers=False, init_sync=first
        )

    def apply_param_change(self) -> None:
        """A hook froze, unfroze or replaced parameters: rebuild the optimizer over what is trained now."""
        self.state.rebuild_requested = False
        if self.sharded:
            raise ConfigError(
                f"method {self.method.name} changed its trained parameters at step {self.state.step}, which "
                "distributed.strategy=fsdp cannot follow (parameters are sharded once); allowed: "
                "distributed.strategy=ddp for this method"
            )
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
        kind = sched.lr_scheduler
        if sched.scheduler_step == "epoch":
            t //= self.state.steps_per_epoch
            if kind == "cosine":  # CosineAnnealingLR(T_max = epochs), stepped once per epoch
                length = math.ceil(length / self.state.steps_per_epoch)
        warmup = math.ceil(sched.warmup_ratio * length)
        return lr_factor(t, length, warmup, kind, sched.min_lr / sched.lr)

    # -- one step ---------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast of a forward pass to the run's precision (``peftlab.train.precision``); none for fp32."""
        return self.precision.autocast()

    def forward_backward(self, batch: dict[str, torch.Tensor], weight: float = 1.0) -> torch.Tensor:
        """Forward and backward of one micro-batch whose mean loss counts ``weight`` of the step's."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        with self.autocast():
            loss = self.forward_model(**batch).loss
            extra = self.method.extra_loss(self.model, batch)
            if extra is not None:
                loss = loss + extra
        self.precision.backward(loss * weight if weight != 1.0 else loss)
        return loss.detach() * weight

    def accumulate(self, micro: list[accumulate.MicroBatch]) -> torch.Tensor:
        """Sum the gradients of every micro-batch (DDP all-reduces only in the last one's backward);
        returns the step's loss (this rank's weighted share)."""
        total = torch.zeros((), device=self.device)
        for i, part in enumerate(micro):
            with distributed.gradient_sync(self.forward_model, enabled=i == len(micro) - 1):
                total += self.forward_backward(part.batch, part.weight)
        return total

    def train_step(self, batch: dict[str, torch.Tensor], total_targets: int | None = None) -> torch.Tensor:
        """One optimizer step on ``batch`` (this rank's share), in micro-batches when configured.
        ``total_targets``: the targets of the whole global batch (see ``accumulate.split``)."""
        state = self.state
        set_lr(self.optimizer, self.lr_factor())
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # logged: a rebuild after the step resets groups
        micro = accumulate.split(batch, self.sched.micro_batch_size, self.model, total_targets)
        if state.step == 0 and self.cfg.measure.flops:
            loss_box: list[torch.Tensor] = []
            self.history.flops_per_step = efficiency.count_flops(
                lambda: loss_box.append(self.accumulate(micro))
            )
            loss = loss_box[0]
        else:
            loss = self.accumulate(micro)
        finite = self.precision.unscale(self.optimizer, self.trainable)
        if finite:  # an fp16 overflow: the scaler skips this step; hooks must not read inf gradients
            self.method.after_backward(state)
            if self.sched.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.trainable, self.sched.max_grad_norm, foreach=True)
        self.precision.step(self.optimizer, finite)
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        self.method.after_step(state)
        if self.first_run and state.step == self.first_run:
            self.restart()
        elif state.rebuild_requested:
            self.apply_param_change()
        return loss

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self, progress: Progress, rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything the next step depends on: the trained tensors (the method's adapter state: all of
        the model for full fine-tuning), the method's own state (AFLoRA's scores and frozen set,
        Light-PEFT's phase, masks and pruning), the optimizer, the RNG states, the data order and loss
        window (``progress``) and the history. The learning rate is a function of the step.
        ``rng``: every rank's RNG states (``gathered_rng_state``); by default this process's only.
        Tensors are copied to the CPU: a copy on the GPU would double full fine-tuning's memory."""
        adapter = self.method.adapter_state_dict(self.model)
        self.flush_step_times()
        return {
            "run_id": self.cfg.options.run_id,
            "step": self.state.step,
            "adapter": {k: v.detach().to("cpu", copy=True) for k, v in adapter.items()},
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng if rng is not None else [rng_state()],
            "loop": progress.to_checkpoint(),
            "history": dataclasses.asdict(self.history),
            "trainable_start": self.trainable_start,
        }

    def load_state_dict(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Put this freshly built trainer where ``payload`` was; returns the loop's progress state."""
        self.method.load_state_dict(payload["method"], self.model)
        self.method.load_adapter_state_dict(self.model, payload["adapter"])
        self.state.step = payload["step"]
        self.apply_param_change()  # the optimizer over what is trained now, then its saved state
        self.optimizer.load_state_dict(payload["optimizer"])
        self.history = History(**payload["history"])
        self.trainable_start = payload["trainable_start"]
        set_rng_state(payload["rng"])
        return payload["loop"]

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, resume_from: dict[str, Any] | None = None, final_eval: bool = True) -> History:
        """Train to ``total_steps``; from a checkpoint's payload (``state_dict``) when one is given.
        A stop signal (``train.stop``) ends it after a whole step with a checkpoint: StopRequested.
        ``final_eval=False``: the caller evaluates the trained model (after saving it)."""
        state = self.state
        progress = self._begin(resume_from)
        self.model.train()
        bar = tqdm(
            total=state.total_steps,
            initial=state.step,
            desc=f"{self.method.name}/{self.cfg.task_name}",
            disable=not self.cfg.options.progress_bar,
            dynamic_ncols=True,
        )
        self.timer.ready()
        with StopSignals() as stop:
            self._loop(progress, bar, stop)
        bar.close()
        self.flush_step_times()
        self.method.on_train_end(state)
        if state.rebuild_requested:
            self.apply_param_change()
        if final_eval and self.history.last_eval_step != state.step:
            self.evaluate()
        return self.history

    def _loop(self, progress: Progress, bar: tqdm, stop: StopSignals) -> None:
        state = self.state
        generator = getattr(getattr(self.train_loader, "sampler", None), "generator", None)
        skip = progress.consumed  # batches of the current epoch already trained on (when resuming)
        while state.step < state.total_steps:
            progress.start_epoch(generator, resuming=skip > 0)
            for batch in self.train_loader:
                progress.consumed += 1
                if skip:
                    skip -= 1
                    continue
                progress.add(self._timed_step(batch))
                bar.update(1)
                stop.step = state.step
                checkpoint = self._after_step(progress, bar)
                self.timer.ready()
                if state.step >= state.total_steps:
                    break  # the last step: the run goes on to save and evaluate
                if stop.requested(state.step, self.sched.log_every_steps, self.device):
                    bar.close()
                    raise stop.stop(state.step, str(checkpoint or self._write_checkpoint(progress)))

    def _write_checkpoint(self, progress: Progress) -> Path:
        """This step's checkpoint, written by rank 0; every rank calls it (the RNG states are gathered)
        and gets its path."""
        rng = gathered_rng_state()  # on every rank: each saves its own device's CUDA state
        written = None
        if distributed.is_main():
            written = self.run_dir.write_checkpoint(
                self.state.step, self.state_dict(progress, rng), self.cfg.checkpoint.keep
            )
        return written or Path(f"step {self.state.step}")

    def _begin(self, resume_from: dict[str, Any] | None) -> Progress:
        """Where training starts: step 0, or the checkpoint's step with its data order and loss window."""
        progress = Progress(loss_sum=torch.zeros((), device=self.device))
        if resume_from is not None:
            progress.restore(self.load_state_dict(resume_from))
            self.run_dir.truncate_metrics(after_step=self.state.step)
            log.info("resumed at step %d", self.state.step)
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
        self.timer.start()
        total_targets = accumulate.count_targets(self.model, batch["labels"])  # of the global batch
        batch = distributed.shard(batch)
        tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0  # host copy: no sync
        history.tokens += tokens * distributed.world_size()
        history.trainable_param_steps += self.trainable_count  # what this step trains
        history.adapter_param_steps += self.trainable_count - self.trainable_head_count
        loss = self.train_step(batch, total_targets)
        self.timer.stop()
        # examples: a packed batch's rows hold several (each starts at position 0); the batch is still
        # in host memory here, so counting them is no device sync
        packed = batch.get("position_ids")
        samples = int((packed == 0).sum()) if packed is not None else len(batch["labels"])
        samples *= distributed.world_size()
        history.samples += samples
        if self.timer.steps == 1:  # this process's first: CUDA init, FLOP count, compilation
            history.warmup_steps.append(self.state.step)
            history.warmup_samples += samples
            history.warmup_tokens += tokens * distributed.world_size()
        return loss

    def flush_step_times(self) -> None:
        """Move the step times timed since the last call into the history (one device sync on CUDA)."""
        times = self.timer.flush()
        self.history.step_times += times
        self.history.train_time_s += sum(times)
        self.history.data_wait_s += self.timer.data_wait_s
        self.timer.data_wait_s = 0.0

    def _after_step(self, progress: Progress, bar: tqdm) -> Path | None:
        """Log the loss window, evaluate and checkpoint when their step comes; returns the checkpoint
        written. The last step's evaluation is the run's final one, after the adapter is saved."""
        step, last = self.state.step, self.state.step == self.state.total_steps
        if step % self.sched.log_every_steps == 0 or last:
            bar.set_postfix(
                loss=f"{self._log_train(progress.loss_sum / progress.window, progress.window):.4f}"
            )
            progress.reset_window()
        if step % self.eval_every == 0 and not last:
            self.evaluate()
        every = self.cfg.checkpoint.every_steps
        if every and step % every == 0 and not last:
            return self._write_checkpoint(progress)
        return None

    def evaluate(self) -> dict[str, float]:
        """Score every evaluation split, record it in the history and metrics.jsonl
        (``train.evaluation``)."""
        return evaluation.evaluate(self)

    def summary(self, wall_time_s: float) -> dict[str, Any]:
        """What results.json records of the run so far (``train.summary``)."""
        return summary.run_summary(self, wall_time_s)

    def _log_train(self, mean_loss_tensor: torch.Tensor, window: int) -> float:
        return summary.log_train_window(self, mean_loss_tensor, window)
