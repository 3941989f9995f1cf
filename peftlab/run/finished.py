"""A finished run rebuilt from its folder: its config checked again, its model and method built as the
run built them (same seed), its saved adapter loaded. eval_only and export both start from here."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from peftlab import distributed
from peftlab.config import RunConfig, check_config
from peftlab.errors import ConfigError
from peftlab.methods.base import Method
from peftlab.models import resolve_device
from peftlab.models.footprint import Workload
from peftlab.run.build import attach_method, make_method, make_model, make_task
from peftlab.run.folder import CONFIG, RESULTS, RunDir
from peftlab.tasks.base import Task


@dataclass
class FinishedRun:
    """A completed run's model with its adapter loaded (no training data read)."""

    path: Path
    config: RunConfig
    task: Task
    model: torch.nn.Module
    method: Method
    processor: Any  # tokenizer, or ImageSpec for image models
    device: torch.device


def completed_config(folder: Path, label: str) -> DictConfig:
    """The config a completed run saved; a killed or failed run may have left an adapter: refused."""
    run_dir = RunDir(folder, writes=False)
    if not (folder / CONFIG).exists():
        raise ConfigError(f"{label}: no {CONFIG} there; expected a peftlab run folder")
    status = run_dir.finished_status()
    if status == "unreadable":
        raise ConfigError(f"{label}: {run_dir.results_error}; whether that run completed is unknown")
    if status == "failed" and _failed_stage(folder) == "evaluation":
        status = "completed"  # trained and saved: the final evaluation failed (eval_only redoes it)
    if status != "completed":
        raise ConfigError(
            f"{label}: that run did not complete ({RESULTS} status: {status or 'none'}); only a completed "
            "run's adapter is used"
        )
    return run_dir.read_config()


def _failed_stage(folder: Path) -> str | None:
    """The stage a failed run stopped in (results.json ``stage``)."""
    try:
        return json.loads((folder / RESULTS).read_text()).get("stage")
    except (OSError, ValueError, AttributeError):
        return None


def load_finished_run(
    folder: str | Path,
    prepare: Callable[[DictConfig], DictConfig] | None = None,
    on_device: bool = False,
    label: str | None = None,
) -> FinishedRun:
    """The completed run in ``folder`` rebuilt with its adapter. ``prepare``: what the caller changes in
    the saved config before it is checked (eval_only: this command's data location and sample limits;
    export: the CPU). ``on_device``: on ``model.device`` (this rank's, under torchrun), after the memory
    check of a training step's workload (eval_only); else built on the CPU. ``label``: how errors name
    the folder."""
    folder = Path(folder)
    label = label or f"load_from={folder}"
    saved = completed_config(folder, label)
    run = check_config(prepare(saved) if prepare else saved)
    task, method = make_task(run), make_method(run)
    device, workload = torch.device("cpu"), None
    if on_device:
        device = distributed.init_from_env(resolve_device(run.model.device))
        workload = Workload.from_config(run.raw)
    model, processor = make_model(run, task, device if on_device else None, workload)
    attach_method(run, model, method, task, None, device, folder, label)
    return FinishedRun(folder, run, task, model, method, processor, device)
