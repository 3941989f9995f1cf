"""Periodic checkpoints and exact resume.

A checkpoint holds everything the next step depends on: the trained tensors (the method's adapter
state: all of the model for full fine-tuning), the method's own state (AFLoRA's scores and frozen set,
Light-PEFT's phase, masks and pruning), the optimizer, the RNG states (torch, CUDA, Python, NumPy), the
data order (the shuffling generator's state at the start of the epoch, and the step), the loss window
and the run's history. The learning rate is a function of the step. Files are written to a temporary
name, fsync'd and renamed (``run_dir.atomic_write``), and only the last ``keep`` stay, so a kill at any
moment leaves a readable checkpoint. Each checkpoint holds its run's id (``run_id`` in config.yaml):
resume uses only the newest readable checkpoint of the run it continues.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

from peftlab.errors import ConfigError, StorageError
from peftlab.train.run_dir import CHECKPOINTS, atomic_write

if TYPE_CHECKING:
    from peftlab.train.loop import Trainer

log = logging.getLogger(__name__)
PATTERN = re.compile(r"step_(\d+)\.pt$")


def checkpoint_paths(run_path: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    found = [
        (int(m.group(1)), p)
        for p in (run_path / CHECKPOINTS).glob("step_*.pt")
        if (m := PATTERN.search(p.name))
    ]
    return [p for _, p in sorted(found)]


def usable_checkpoint(run_path: Path, run_id: str | None) -> Path:
    """The newest checkpoint that can be read and belongs to run ``run_id``; older ones are tried when
    the newest is unreadable (cut short) or another run's (each skip is a warning naming the file).
    ConfigError when there is none."""
    paths = checkpoint_paths(run_path)
    if not paths:
        raise ConfigError(
            f"resume: no checkpoint in {run_path / CHECKPOINTS}; a run writes them when "
            "checkpoint.every_steps is set"
        )
    skipped = []
    for path in reversed(paths):
        try:  # mmap: the tensors are not read, only the file's index and the small objects
            owner = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("run_id")
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped, named in the warning
            skipped.append(f"{path.name} is unreadable ({type(err).__name__}: {err})")
        else:
            if owner == run_id:
                return path
            skipped.append(f"{path.name} belongs to run {owner}, not {run_id}")
        log.warning("resume: %s; trying an older checkpoint", skipped[-1])
    where = run_path / CHECKPOINTS
    raise ConfigError(f"resume: no usable checkpoint of run {run_id} in {where}: {'; '.join(skipped)}")


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(trainer: Trainer, loop_state: dict[str, Any], keep: int) -> Path:
    """Write ``checkpoints/step_<N>.pt`` atomically and drop all but the newest ``keep``."""
    folder = trainer.run_dir.path / CHECKPOINTS
    folder.mkdir(exist_ok=True)
    model, method = trainer.model, trainer.method
    payload = {
        "run_id": trainer.cfg.get("run_id"),
        "step": trainer.state.step,
        "adapter": {k: v.detach().clone() for k, v in method.adapter_state_dict(model).items()},
        "method": method.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "rng": rng_state(),
        "loop": loop_state,
        "history": dataclasses.asdict(trainer.history),
        "trainable_start": trainer.trainable_start,
    }
    path = folder / f"step_{trainer.state.step:07d}.pt"
    with atomic_write(path) as tmp, tmp.open("wb") as handle:
        writer = _RecordingWriter(handle)
        try:
            torch.save(payload, writer)
        except RuntimeError as err:  # torch reports a failed write as "unexpected pos ...": say why
            cause = writer.error.strerror if writer.error else str(err)
            raise StorageError(f"could not write {path}: {cause}") from err
    for old in checkpoint_paths(trainer.run_dir.path)[:-keep]:
        old.unlink(missing_ok=True)
    return path


class _RecordingWriter:
    """A file for ``torch.save`` that keeps the OSError of a failed write (disk full, quota), which torch
    only reports as "unexpected pos"."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def load_checkpoint(trainer: Trainer, path: Path) -> dict[str, Any]:
    """Put a freshly built trainer back where the checkpoint was; returns the loop's own state."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ConfigError(f"resume: checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err
    model, method = trainer.model, trainer.method
    method.load_state_dict(payload["method"], model)
    method.load_adapter_state_dict(model, payload["adapter"])
    trainer.state.step = payload["step"]
    trainer.apply_param_change()  # the optimizer over what is trained now, then its saved state
    trainer.optimizer.load_state_dict(payload["optimizer"])
    trainer.history = type(trainer.history)(**payload["history"])
    trainer.trainable_start = payload["trainable_start"]
    set_rng_state(payload["rng"])
    return payload["loop"]
