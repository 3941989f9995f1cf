"""One run from a composed config: check inputs, build task/model/method, train or evaluate, record."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader

from peftlab import __version__, distributed
from peftlab.config import RunConfig, check_config
from peftlab.errors import ConfigError, RunInterrupted, StorageError, TrainingDiverged
from peftlab.models import resolve_device
from peftlab.models.build import is_pretrained
from peftlab.models.footprint import Workload
from peftlab.run.artifacts import save_adapter
from peftlab.run.build import attach_method, make_method, make_model, make_task, seed_everything
from peftlab.run.checkpoint import read_checkpoint, usable_checkpoint
from peftlab.run.finished import FinishedRun, load_finished_run
from peftlab.run.folder import CONFIG, CURVES, RunDir
from peftlab.run.loggers import build_logger
from peftlab.run.overrides import refuse_ignored
from peftlab.run.provenance import provenance
from peftlab.run.study import AUTO, plan_on_main_rank
from peftlab.train.stop import StopRequested
from peftlab.train.trainer import Trainer

__all__ = ["build_trainer", "limit_random_weights_eval", "run_experiment", "seed_everything"]

log = logging.getLogger(__name__)

# a model with random weights (model.pretrained=false) scores nothing meaningful: its evaluation is only a
# check that evaluation runs, so it takes this many examples unless task.max_eval_samples says otherwise
# (greedy decoding of all 1319 GSM8k questions to 256 tokens would take hours on a CPU)
RANDOM_WEIGHTS_EVAL_SAMPLES = 16
# what eval_only takes from this command rather than the saved run, when it sets them
EVAL_LIMITS = ("max_eval_samples", "zero_shot_limit")
# what eval_only takes from the saved run
SAVED_GROUPS = ("method", "model", "schedule", "seed", "task")


def limit_random_weights_eval(cfg: DictConfig) -> bool:
    """A paper-sized model built without its weights (``model.pretrained=false``) and no
    ``task.max_eval_samples``: evaluate on a few examples only. (The tiny test models are random by design
    and cheap to evaluate: they keep the task's limits.) Applied to the composed config; returns whether
    it set the limit."""
    unset = cfg.task.get("max_eval_samples") is None
    if not unset or cfg.model.source == "random" or is_pretrained(cfg.model):
        return False
    with open_dict(cfg):
        cfg.task.max_eval_samples = RANDOM_WEIGHTS_EVAL_SAMPLES
    log.warning(
        "model %s has random weights (model.pretrained=false): evaluating on the first %d examples only, "
        "as a check that evaluation runs (set task.max_eval_samples to choose)",
        cfg.model.name,
        RANDOM_WEIGHTS_EVAL_SAMPLES,
    )
    return True


def checked(cfg: DictConfig | RunConfig) -> RunConfig:
    """The typed config of a composed one, with the random-weights eval limit of the model it trains
    (eval_only: of the saved run's model, ``evaluate_saved``)."""
    if isinstance(cfg, RunConfig):
        return cfg
    run = check_config(cfg)
    if not run.options.eval_only and limit_random_weights_eval(cfg):
        run = check_config(cfg)  # with the task's new sample limit
    return run


def build_trainer(
    cfg: DictConfig | RunConfig, run_dir: RunDir, device: torch.device | None = None
) -> Trainer:
    """Task, model + method, data loaders and optimizer of a run, ready to ``fit`` or ``evaluate``.

    Every input is checked (task, method options, device, data files) before the model is built.
    ``device``: this rank's device when the caller has joined the process group already.
    """
    run = checked(cfg)
    task, method = make_task(run), make_method(run)
    device = device or distributed.init_from_env(resolve_device(run.model.device))
    distributed.check_batch_size(run.schedule.batch_size)
    train_examples = task.load_split("train")
    eval_examples = {split: task.load_split(split) for split in task.eval_splits}
    model, tokenizer = make_model(run, task, device, Workload.from_config(run.raw))
    sched = run.schedule
    generator = torch.Generator().manual_seed(run.options.seed)
    train_loader = task.build_loader(
        train_examples, tokenizer, sched.batch_size, sched.max_seq_length, generator
    )
    attach_method(run, model, method, task, train_loader, device, None)
    parts = FinishedRun(run_dir.path, run, task, model, method, tokenizer, device)
    return _trainer(parts, run_dir, device, eval_examples, train_loader, train_examples)


def _trainer(
    parts: FinishedRun,
    run_dir: RunDir,
    device: torch.device,
    eval_examples: dict[str, list],
    train_loader: DataLoader | None = None,
    train_examples: list | None = None,
) -> Trainer:
    """The Trainer over built parts (a new run's, or a finished run's: no training data), with a loader
    per evaluation split and the header of results.json."""
    run, task, sched = parts.config, parts.task, parts.config.schedule
    eval_loaders = {
        split: task.build_loader(ex, parts.processor, sched.eval_batch_size, sched.max_seq_length)
        for split, ex in eval_examples.items()
    }
    loader = train_loader or []
    trainer = Trainer(run, parts.model, parts.method, task, loader, eval_loaders, device, run_dir)  # type: ignore[arg-type]
    trainer.header = {
        "peftlab_version": __version__,
        "method": parts.method.name,
        "model": run.model.name,
        "task": run.task_name,
        "seed": run.options.seed,
        "device": str(device),
        "train_examples": len(train_examples or []),
        "eval_examples": {k: len(v) for k, v in eval_examples.items()},
        "baseline": task.baseline(train_examples or [], eval_examples),
        "provenance": provenance(device),
    }
    return trainer


def run_experiment(cfg: DictConfig) -> dict[str, Any]:
    """Train (or, with ``eval_only``, evaluate) and write the run folder. Returns results.json's content.

    Every value is checked before any work (``config.check_config``); the run folder is then locked for
    the whole run (``RunDir.lock``) and cleared of what an earlier run wrote (``RunDir.claim``)."""
    run = checked(cfg)
    device = distributed.init_from_env(resolve_device(run.model.device))
    if distributed.enabled():  # every rank works in rank 0's run folder; only rank 0 writes there
        run.set("output_dir", distributed.broadcast_object(str(run.options.output_dir)))
    if run.options.resume == AUTO:  # a study's job: skip it when done, resume it, or start it
        decided = plan_on_main_rank(run)
        if decided.action == "skip":
            return decided.results
        run.set("resume", run.options.output_dir if decided.action == "resume" else False)
    if run.options.resume:
        return resume_run(run)
    run_dir = RunDir(run.options.output_dir, writes=distributed.is_main())
    try:
        if run.options.eval_only:
            _on_main_rank(run_dir.lock_for_eval)
            return evaluate_saved(run, run_dir)
        _on_main_rank(lambda: run_dir.start(overwrite=run.options.overwrite))
        run.set("run_id", uuid.uuid4().hex)  # in config.yaml and every checkpoint: resume uses only its own
        trainer = build_trainer(run, run_dir, device=device)
        run_dir.save_config(run.raw)
        return _train_logged(run, trainer)
    finally:
        run_dir.unlock()


def _on_main_rank(action: Callable[[], object]) -> None:
    """Run ``action`` on rank 0, which owns the folder, and raise its ConfigError on every rank, so that
    no rank goes on to wait in a collective for a rank that stopped."""
    problem = None
    if distributed.is_main():
        try:
            action()
        except ConfigError as err:
            problem = err
    problem = distributed.broadcast_object(problem)
    if problem is not None:
        raise problem


def resume_run(run: RunConfig) -> dict[str, Any]:
    """Continue a killed run from its newest readable checkpoint of the same run (``run_id``), with the
    config it was started with (data location and progress bar from this command)."""
    folder = Path(run.options.output_dir if run.options.resume is True else run.options.resume)
    run_dir = RunDir(folder, writes=distributed.is_main())
    if not (folder / CONFIG).exists():
        raise ConfigError(f"resume: {folder} holds no {CONFIG}; expected the folder of a started run")
    saved = run_dir.read_config()
    refuse_ignored("resume", run.raw, saved, folder)
    with open_dict(saved):
        saved.output_dir, saved.resume = str(folder), True
        saved.progress_bar, saved.data_root = run.options.progress_bar, run.options.data_root
    resumed = checked(saved)
    try:
        _on_main_rank(run_dir.reopen)
        checkpoint = usable_checkpoint(folder, resumed.options.run_id)
        trainer = build_trainer(resumed, run_dir)
        log.info("resuming from %s", checkpoint)
        return _train_logged(resumed, trainer, resume_from=read_checkpoint(checkpoint))
    finally:
        run_dir.unlock()


def _train_logged(
    run: RunConfig, trainer: Trainer, resume_from: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``_train`` with the run's metrics logger (W&B or nothing) open around it."""
    run_dir = trainer.run_dir
    if run_dir.writes:
        run_dir.logger = build_logger(run.raw, run_dir.path)
    try:
        return _train(run, trainer, resume_from)
    finally:
        run_dir.logger.finish()


def _train(run: RunConfig, trainer: Trainer, resume_from: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit, save the adapter, evaluate, then write results.json last: a trained adapter is on disk
    before the final evaluation starts. A run that stops writes ``failed`` (an error) or
    ``interrupted`` (Ctrl-C or a stop signal: RunInterrupted says how to resume) with the ``stage`` it
    stopped in and what it measured so far; eval_only redoes a failed final evaluation."""
    run_dir, task = trainer.run_dir, trainer.task
    start, stage = time.perf_counter(), "training"
    try:
        trainer.fit(resume_from, final_eval=False)
        stage = "saving"
        adapter = _save_trained(run, trainer)
        stage = "evaluation"
        if trainer.history.last_eval_step != trainer.state.step:
            trainer.evaluate()
        if not distributed.is_main():  # rank 0 reports and saves
            return {
                **trainer.header,
                "status": "completed",
                "rank": distributed.rank(),
                "final_eval": trainer.history.last_eval,
                "main_metric": task.main_metric,
            }
        results = {**trainer.header, "status": "completed", **trainer.summary(time.perf_counter() - start)}
        if adapter is not None:
            results["adapter"] = str(adapter)
    except KeyboardInterrupt as err:
        _record_stop(trainer, start, "interrupted", str(err) or "interrupted by Ctrl-C", stage)
        raise _interrupted(run_dir, err) from None
    except Exception as err:
        known = isinstance(err, ConfigError | TrainingDiverged | StorageError)
        _record_stop(trainer, start, "failed", str(err) if known else f"{type(err).__name__}: {err}", stage)
        raise
    if run.options.curves:
        _write_curves(run_dir, trainer.method.name, task.main_metric)
    run_dir.write_results(results)
    main = task.main_metric
    log.info(
        "final %s dev %s: %.4f (best %.4f at step %d); results in %s",
        run.task_name,
        main,
        results["final_eval"][main],
        results["best_eval"][main],
        results["best_step"],
        run_dir.path,
    )
    return results


def _save_trained(run: RunConfig, trainer: Trainer) -> Path | None:
    """adapter.safetensors + adapter.json of the trained model (``save_adapter``), before any final
    evaluation; sharded (FSDP) tensors are gathered by every rank together, rank 0 saves them whole."""
    if not run.options.save_adapter:
        return None
    adapter = distributed.full_tensors(trainer.method.adapter_state_dict(trainer.model))
    if not distributed.is_main():
        return None
    task = trainer.task
    meta = {"model": run.model.name, "task": run.task_name, "num_labels": task.num_labels}
    return save_adapter(trainer.run_dir.path, trainer.method, adapter, meta)


def _write_curves(run_dir: RunDir, method: str, metric: str) -> None:
    """curves.png: loss, metric and trainable parameters against the step. Best effort: a figure that
    cannot be drawn is logged, and the run's results still count."""
    from peftlab.figures import run_curves

    try:
        run_dir.write_file(CURVES, run_curves(run_dir.path, method, metric))
    except Exception as err:  # noqa: BLE001 - e.g. a broken matplotlib install
        log.warning("no curves.png (%s: %s)", type(err).__name__, err)


def _record_stop(trainer: Trainer, start: float, status: str, error: str, stage: str) -> None:
    """results.json of a run that stopped, with what it measured so far. Best effort: when this fails
    too (the disk is full), it is logged and the error that stopped the run is what the user sees."""
    if not distributed.is_main():
        return
    try:
        summary = trainer.summary(time.perf_counter() - start)
    except Exception as err:  # noqa: BLE001 - e.g. a method report of a run that never stepped
        log.warning("no summary for results.json (%s: %s)", type(err).__name__, err)
        summary = {}
    try:
        stopped = {"status": status, "stage": stage, "error": error}
        trainer.run_dir.write_results({**trainer.header, **stopped, **summary})
    except Exception as err:  # noqa: BLE001
        log.error("could not write status %r to %s: %s", status, trainer.run_dir.path, err)


def _interrupted(run_dir: RunDir, err: KeyboardInterrupt) -> RunInterrupted:
    """What the CLI reports of a stopped run: the resume command, the exit status (130 Ctrl-C, 128 + N
    for signal N) and, for a signal, the handler that was installed before training."""
    what = str(err) if isinstance(err, StopRequested) else "interrupted"
    if run_dir.checkpoints():
        hint = f"{what}; resume with: python -m peftlab resume={run_dir.path}"
    else:
        hint = f"{what}; no checkpoint was written (checkpoint.every_steps), so a new run starts over"
    if not isinstance(err, StopRequested):
        return RunInterrupted(hint)
    previous = err.previous
    handover = (lambda: previous(err.signum, None)) if previous else None
    return RunInterrupted(hint, exit_code=err.exit_code, handover=handover)


def evaluate_saved(run: RunConfig, run_dir: RunDir) -> dict[str, Any]:
    """Rebuild the model of a finished run, load its adapter, evaluate.

    Method, model, schedule (sequence length), seed (a random base is rebuilt from it) and task come
    from the saved run; data location and (when set) ``task.max_eval_samples`` and ``task.zero_shot_limit``
    from the current command."""
    if not run.options.load_from:
        raise ConfigError("eval_only=true needs load_from=DIR, a run folder holding adapter.safetensors")
    source = Path(run.options.load_from)
    cfg = run.raw

    def this_command_with_saved_groups(saved: DictConfig) -> DictConfig:
        allowed = tuple(f"task.{k}" for k in EVAL_LIMITS)
        refuse_ignored("eval_only", cfg, saved, source, SAVED_GROUPS, allowed)
        with open_dict(cfg):
            limits = {k: cfg.task.get(k) for k in EVAL_LIMITS}
            for key in SAVED_GROUPS:
                cfg[key] = saved[key]
            for key, limit in limits.items():  # this command's sample limits, when it sets them
                if limit is not None:
                    cfg.task[key] = limit
        limit_random_weights_eval(cfg)
        return cfg

    finished = load_finished_run(source, this_command_with_saved_groups, on_device=True)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    eval_examples = {split: finished.task.load_split(split) for split in finished.task.eval_splits}
    trainer = _trainer(finished, run_dir, finished.device, eval_examples)
    metrics = trainer.evaluate()
    results = {
        **trainer.header,
        "status": "completed",
        "eval_only": True,
        "load_from": str(source),
        "eval": metrics,
        "main_metric": trainer.task.main_metric,
        "metric_units": trainer.task.metric_units(metrics),
    }
    run_dir.write_eval_results(results)
    log.info("eval of %s: %s", source, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return results
