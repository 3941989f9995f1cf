"""Periodic checkpoints and exact resume.

A checkpoint holds everything the next step depends on: the trained tensors (the method's adapter
state: all of the model for full fine-tuning), the method's own state (AFLoRA's scores and frozen set,
Light-PEFT's phase, masks and pruning), the optimizer, the RNG states (torch, CUDA, Python, NumPy), the
data order (the shuffling generator's state at the start of the epoch, and the step), the loss window
and the run's history. The learning rate is a function of the step. Files are written to a temporary
name and renamed, and only the last ``keep`` stay, so a kill at any moment leaves a readable checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from peftlab.train.loop import Trainer

CHECKPOINTS = "checkpoints"
PATTERN = re.compile(r"step_(\d+)\.pt$")


def checkpoint_paths(run_path: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    found = [
        (int(m.group(1)), p)
        for p in (run_path / CHECKPOINTS).glob("step_*.pt")
        if (m := PATTERN.search(p.name))
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_path: Path) -> Path | None:
    paths = checkpoint_paths(run_path)
    return paths[-1] if paths else None


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
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    for old in checkpoint_paths(trainer.run_dir.path)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(trainer: Trainer, path: Path) -> dict[str, Any]:
    """Put a freshly built trainer back where the checkpoint was; returns the loop's own state."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
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
