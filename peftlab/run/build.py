"""The parts of a run built from its checked config: task, method, model (seeded), the method attached."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from peftlab.blocks.params import count_parameters
from peftlab.config import RunConfig
from peftlab.methods.base import CalibrationData, Method
from peftlab.models import build_model
from peftlab.models.footprint import Workload
from peftlab.registry import METHODS, TASKS
from peftlab.run.artifacts import load_adapter
from peftlab.tasks.base import Task

log = logging.getLogger(__name__)

# The calibration loader shuffles with its own generator (seed + this), so the training order of a seed
# is the same for every method, whether or not it reads calibration batches.
CALIBRATION_SEED_OFFSET = 7919


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_task(run: RunConfig) -> Task:
    """The task of the run (it reads its config group; ``run.task`` is that group checked)."""
    task: Task = TASKS.get(run.task_name)(run.raw.task, run.options.data_root)
    task.progress_bar = run.options.progress_bar
    return task


def make_method(run: RunConfig) -> Method:
    """The method of the run with its checked config (``Method.config_class``)."""
    return METHODS.get(run.method_name)(run.method)


def make_model(
    run: RunConfig, task: Task, device: torch.device | None, workload: Workload | None
) -> tuple[torch.nn.Module, object]:
    """The model the task needs, built from the run's seed (a random base is the same every time), on
    ``device`` (before attaching: adapters are created where their base layers are); and its input
    processor (tokenizer or ImageSpec)."""
    seed_everything(run.options.seed)
    model, processor = build_model(
        run.model, task.num_labels, task.model_head, workload, device or torch.device("cpu"), run.options.seed
    )
    task.use_model(model)
    if device is not None and (workload is None or workload.shards == 1):  # FSDP moves only its shards
        model.to(device)
    return model, processor


def attach_method(
    run: RunConfig,
    model: torch.nn.Module,
    method: Method,
    task: Task,
    train_loader: DataLoader | None,
    device: torch.device,
    adapter_from: Path | None,
    label: str | None = None,
) -> None:
    """Let the method score training data (if it wants), attach it, and load a saved adapter."""
    params = count_parameters(model)
    calibration = None
    if train_loader is not None:  # for methods that score the model on training data before attaching
        calibration = CalibrationData(
            _reshuffled(train_loader, run.options.seed + CALIBRATION_SEED_OFFSET), device, task.num_labels
        )
        if type(method).prepare is not Method.prepare:  # it runs the model: whole on the device (FSDP too)
            model.to(device)
    method.setup(model, calibration)
    if adapter_from:
        load_adapter(model, method, adapter_from, label)
    trainable = count_parameters(model, trainable_only=True)
    log.info(
        "%s on %s/%s: %d of %d params trainable (%.3f%%)",
        method.name,
        run.model.name,
        run.task_name,
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
