"""One run from a composed config: check inputs, build task/model/method, train or evaluate, record."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader

from peftlab import __version__, distributed
from peftlab.blocks.params import count_parameters
from peftlab.config import check_config
from peftlab.errors import ConfigError, RunInterrupted, StorageError, TrainingDiverged
from peftlab.methods.base import CalibrationData, Method, build_method
from peftlab.models import build_model, resolve_device
from peftlab.models.build import is_pretrained
from peftlab.models.footprint import Workload
from peftlab.registry import TASKS
from peftlab.run.artifacts import load_adapter, save_adapter
from peftlab.run.checkpoint import read_checkpoint, usable_checkpoint
from peftlab.run.folder import RunDir
from peftlab.run.loggers import build_logger
from peftlab.tasks.base import Task
from peftlab.train.trainer import Trainer

log = logging.getLogger(__name__)

# The calibration loader shuffles with its own generator (seed + this), so the training order of a seed
# is the same for every method, whether or not it reads calibration batches.
CALIBRATION_SEED_OFFSET = 7919
# a model with random weights (model.pretrained=false) scores nothing meaningful: its evaluation is only a
# check that evaluation runs, so it takes this many examples unless task.max_eval_samples says otherwise
# (greedy decoding of all 1319 GSM8k questions to 256 tokens would take hours on a CPU)
RANDOM_WEIGHTS_EVAL_SAMPLES = 16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def limit_random_weights_eval(cfg: DictConfig) -> None:
    """A paper-sized model built without its weights (``model.pretrained=false``) and no
    ``task.max_eval_samples``: evaluate on a few examples only. (The tiny test models are random by design
    and cheap to evaluate: they keep the task's limits.)"""
    unset = cfg.task.get("max_eval_samples") is None
    if not unset or cfg.model.source == "random" or is_pretrained(cfg.model):
        return
    with open_dict(cfg):
        cfg.task.max_eval_samples = RANDOM_WEIGHTS_EVAL_SAMPLES
    log.warning(
        "model %s has random weights (model.pretrained=false): evaluating on the first %d examples only, "
        "as a check that evaluation runs (set task.max_eval_samples to choose)",
        cfg.model.name,
        RANDOM_WEIGHTS_EVAL_SAMPLES,
    )


def build_trainer(
    cfg: DictConfig, run_dir: RunDir, adapter_from: Path | None = None, device: torch.device | None = None
) -> Trainer:
    """Task, model + method, data loaders and optimizer of a run, ready to ``fit`` or ``evaluate``.

    Every input is checked (task, method options, device, data files) before the model is built.
    ``adapter_from``: load that run folder's adapter into the attached model and skip the training data.
    ``device``: this rank's device when the caller has joined the process group already.
    """
    limit_random_weights_eval(cfg)
    task: Task = TASKS.get(cfg.task.name)(cfg.task, cfg.data_root)
    method = build_method(cfg.method)
    device = device or distributed.init_from_env(resolve_device(cfg.model.device))
    distributed.check_batch_size(cfg.schedule.batch_size)
    train_examples = [] if adapter_from else task.load_split("train")
    eval_examples = {split: task.load_split(split) for split in task.eval_splits}

    seed_everything(cfg.seed)
    model, tokenizer = build_model(cfg.model, task.num_labels, task.model_head, Workload.from_config(cfg))
    task.use_model(model)
    task.progress_bar = cfg.progress_bar
    model.to(device)  # before attaching: adapters are created where their base layers are
    sched = cfg.schedule
    train_loader = None
    if train_examples:
        generator = torch.Generator().manual_seed(cfg.seed)
        train_loader = task.build_loader(
            train_examples, tokenizer, sched.batch_size, sched.max_seq_length, generator
        )
    attach_method(cfg, model, method, task, train_loader, device, adapter_from)
    eval_loaders = {
        split: task.build_loader(ex, tokenizer, sched.eval_batch_size, sched.max_seq_length)
        for split, ex in eval_examples.items()
    }
    trainer = Trainer(cfg, model, method, task, train_loader or [], eval_loaders, device, run_dir)  # type: ignore[arg-type]
    trainer.header = {
        "peftlab_version": __version__,
        "method": method.name,
        "model": cfg.model.name,
        "task": cfg.task.name,
        "seed": cfg.seed,
        "device": str(device),
        "train_examples": len(train_examples),
        "eval_examples": {k: len(v) for k, v in eval_examples.items()},
        "baseline": task.baseline(train_examples, eval_examples),
    }
    return trainer


def attach_method(
    cfg: DictConfig,
    model: torch.nn.Module,
    method: Method,
    task: Task,
    train_loader: DataLoader | None,
    device: torch.device,
    adapter_from: Path | None,
) -> None:
    """Let the method score training data (if it wants), attach it, and load a saved adapter."""
    params = count_parameters(model)
    calibration = None
    if train_loader is not None:  # for methods that score the model on training data before attaching
        calibration = CalibrationData(
            _reshuffled(train_loader, cfg.seed + CALIBRATION_SEED_OFFSET), device, task.num_labels
        )
    method.setup(model, calibration)
    if adapter_from:
        load_adapter(model, method, adapter_from)
    trainable = count_parameters(model, trainable_only=True)
    log.info(
        "%s on %s/%s: %d of %d params trainable (%.3f%%)",
        method.name,
        cfg.model.name,
        cfg.task.name,
        trainable,
        params,
        100 * trainable / params,
    )


def _reshuffled(loader: DataLoader, seed: int) -> DataLoader:
    """The same examples and batching as ``loader`` with its own shuffling generator."""
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=loader.collate_fn,
    )


def run_experiment(cfg: DictConfig) -> dict[str, Any]:
    """Train (or, with ``eval_only``, evaluate) and write the run folder. Returns results.json's content.

    Every value is checked before any work (``config.check_config``); the run folder is then locked for
    the whole run (``RunDir.lock``) and cleared of what an earlier run wrote (``RunDir.claim``)."""
    check_config(cfg)
    device = distributed.init_from_env(resolve_device(cfg.model.device))
    if distributed.enabled():  # every rank works in rank 0's run folder; only rank 0 writes there
        with open_dict(cfg):
            cfg.output_dir = distributed.broadcast_object(str(cfg.output_dir))
    if cfg.resume:
        return resume_run(cfg)
    run_dir = RunDir(cfg.output_dir, writes=distributed.is_main())
    try:
        if cfg.eval_only:
            _on_main_rank(run_dir.lock)
            return evaluate_saved(cfg, run_dir)
        _on_main_rank(lambda: run_dir.start(overwrite=cfg.overwrite))
        with open_dict(cfg):
            cfg.run_id = uuid.uuid4().hex  # in config.yaml and every checkpoint: resume uses only its own
        trainer = build_trainer(cfg, run_dir, device=device)
        run_dir.save_config(cfg)
        return _train_logged(cfg, trainer)
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


def resume_run(cfg: DictConfig) -> dict[str, Any]:
    """Continue a killed run from its newest readable checkpoint of the same run (``run_id``), with the
    config it was started with (data location and progress bar from this command)."""
    folder = Path(cfg.output_dir if cfg.resume is True else cfg.resume)
    if not (folder / "config.yaml").exists():
        raise ConfigError(f"resume: {folder} holds no config.yaml; expected the folder of a started run")
    saved = OmegaConf.load(folder / "config.yaml")
    with open_dict(saved):
        saved.output_dir, saved.resume = str(folder), True
        saved.progress_bar, saved.data_root = cfg.progress_bar, cfg.data_root
    check_config(saved)
    run_dir = RunDir(folder, writes=distributed.is_main())
    try:
        _on_main_rank(run_dir.reopen)
        checkpoint = usable_checkpoint(folder, saved.get("run_id"))
        trainer = build_trainer(saved, run_dir)
        log.info("resuming from %s", checkpoint)
        return _train_logged(saved, trainer, resume_from=read_checkpoint(checkpoint))
    finally:
        run_dir.unlock()


def _train_logged(
    cfg: DictConfig, trainer: Trainer, resume_from: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``_train`` with the run's metrics logger (W&B or nothing) open around it."""
    run_dir = trainer.run_dir
    if run_dir.writes:
        run_dir.logger = build_logger(cfg, run_dir.path)
    try:
        return _train(cfg, trainer, resume_from)
    finally:
        run_dir.logger.finish()


def _train(cfg: DictConfig, trainer: Trainer, resume_from: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit, evaluate, save the adapter, then write results.json last: a folder whose results.json is not
    ``completed`` has no adapter that eval_only would use. A run that stops writes ``failed`` (an error)
    or ``interrupted`` (Ctrl-C: RunInterrupted says how to resume) with what it measured so far."""
    run_dir, task = trainer.run_dir, trainer.task
    start = time.perf_counter()
    try:
        trainer.fit(resume_from)
        if trainer.history.last_eval_step != trainer.state.step:
            trainer.evaluate()
        # sharded (FSDP) tensors are gathered by every rank together; rank 0 saves them whole
        adapter = {}
        if cfg.save_adapter:
            adapter = distributed.full_tensors(trainer.method.adapter_state_dict(trainer.model))
        if not distributed.is_main():  # rank 0 reports and saves
            return {
                **trainer.header,
                "status": "completed",
                "rank": distributed.rank(),
                "final_eval": trainer.history.last_eval,
                "main_metric": task.main_metric,
            }
        results = {**trainer.header, "status": "completed", **trainer.summary(time.perf_counter() - start)}
        if cfg.save_adapter:
            meta = {"model": cfg.model.name, "task": cfg.task.name, "num_labels": task.num_labels}
            results["adapter"] = str(save_adapter(run_dir.path, trainer.method, adapter, meta))
    except KeyboardInterrupt:
        _record_stop(trainer, start, "interrupted", "interrupted by Ctrl-C")
        raise RunInterrupted(_resume_hint(run_dir)) from None
    except Exception as err:
        known = isinstance(err, ConfigError | TrainingDiverged | StorageError)
        _record_stop(trainer, start, "failed", str(err) if known else f"{type(err).__name__}: {err}")
        raise
    if cfg.curves:
        _write_curves(run_dir, trainer.method.name, task.main_metric)
    run_dir.write_results(results)
    main = task.main_metric
    log.info(
        "final %s dev %s: %.4f (best %.4f at step %d); results in %s",
        cfg.task.name,
        main,
        results["final_eval"][main],
        results["best_eval"][main],
        results["best_step"],
        run_dir.path,
    )
    return results


def _write_curves(run_dir: RunDir, method: str, metric: str) -> None:
    """curves.png: loss, metric and trainable parameters against the step. Best effort: a figure that
    cannot be drawn is logged, and the run's results still count."""
    from peftlab.figures import CURVES, run_curves

    try:
        run_dir.write_file(CURVES, run_curves(run_dir.path, method, metric))
    except Exception as err:  # noqa: BLE001 - e.g. a broken matplotlib install
        log.warning("no curves.png (%s: %s)", type(err).__name__, err)


def _record_stop(trainer: Trainer, start: float, status: str, error: str) -> None:
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
        trainer.run_dir.write_results({**trainer.header, "status": status, "error": error, **summary})
    except Exception as err:  # noqa: BLE001
        log.error("could not write status %r to %s: %s", status, trainer.run_dir.path, err)


def _resume_hint(run_dir: RunDir) -> str:
    if run_dir.checkpoints():
        return f"interrupted; resume with: python -m peftlab resume={run_dir.path}"
    return "interrupted; no checkpoint was written (checkpoint.every_steps), so a new run starts over"


def evaluate_saved(cfg: DictConfig, run_dir: RunDir) -> dict[str, Any]:
    """Rebuild the model of a finished run, load its adapter, evaluate.

    Method, model, schedule (sequence length), seed (a random base is rebuilt from it) and task come
    from the saved run; data location and (when set) ``task.max_eval_samples`` and ``task.zero_shot_limit``
    from the current command."""
    if not cfg.load_from:
        raise ConfigError("eval_only=true needs load_from=DIR, a run folder holding adapter.safetensors")
    source = Path(cfg.load_from)
    saved_cfg_path = source / "config.yaml"
    if not saved_cfg_path.exists():
        raise ConfigError(f"load_from={source}: no config.yaml there; expected a peftlab run folder")
    status = RunDir(source).finished_status()
    if status != "completed":  # a killed or failed run may have left an adapter: never evaluate it
        raise ConfigError(
            f"load_from={source}: that run did not complete (results.json status: {status or 'none'}); "
            "only a completed run's adapter is evaluated"
        )
    saved = OmegaConf.load(saved_cfg_path)
    with open_dict(cfg):
        limits = {k: cfg.task.get(k) for k in ("max_eval_samples", "zero_shot_limit")}
        for key in ("method", "model", "schedule", "seed", "task"):
            cfg[key] = saved[key]
        for key, limit in limits.items():  # this command's sample limits, when it sets them
            if limit is not None:
                cfg.task[key] = limit
    run_dir.path.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(cfg, run_dir, adapter_from=source)
    metrics = trainer.evaluate()
    results = {
        **trainer.header,
        "status": "completed",
        "eval_only": True,
        "load_from": str(source),
        "eval": metrics,
        "main_metric": trainer.task.main_metric,
    }
    run_dir.write_results(results, name="eval_results.json")
    log.info("eval of %s: %s", source, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return results
