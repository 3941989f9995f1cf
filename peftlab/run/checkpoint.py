"""Checkpoint files: which one a resume may use, and reading it (``RunDir.write_checkpoint`` writes them).

What a checkpoint holds is the Trainer's (``Trainer.state_dict``): everything the next step depends on.
Files are written to a temporary name, fsync'd and renamed (``folder.atomic_write``), and only the last
``keep`` stay, so a kill at any moment leaves a readable checkpoint. Each checkpoint holds its run's id
(``run_id`` in config.yaml): resume uses only the newest readable checkpoint of the run it continues.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from peftlab.errors import ConfigError
from peftlab.run.folder import CHECKPOINTS, checkpoint_paths

log = logging.getLogger(__name__)


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
            owner = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("run_id")
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped, named in the warning
            skipped.append(f"{path.name} is unreadable ({type(err).__name__}: {err})")
        else:
            if owner == run_id:
                return path
            skipped.append(f"{path.name} belongs to run {owner}, not {run_id}")
        log.warning("resume: %s; trying an older checkpoint", skipped[-1])
    where = run_path / CHECKPOINTS
    raise ConfigError(f"resume: no usable checkpoint of run {run_id} in {where}: {'; '.join(skipped)}")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The payload of a checkpoint (``Trainer.state_dict``), on the CPU."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"resume: checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err
