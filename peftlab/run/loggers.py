"""Where metrics go besides the run folder: nothing (``logger=none``) or Weights & Biases."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from peftlab.errors import ConfigError


class MetricsLogger(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...
    def summary(self, results: dict[str, Any]) -> None: ...
    def finish(self) -> None: ...


class NullLogger:
    def log(self, row: dict[str, Any]) -> None:
        pass

    def summary(self, results: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


def sweep_group(cfg: DictConfig) -> str | None:
    """The W&B group of a job: ``logger.group`` if set, else the sweep folder's name in a multirun."""
    if cfg.logger.get("group"):
        return str(cfg.logger.group)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return None


class WandbLogger:
    """One W&B run per job (named method/task/seed; the jobs of a sweep share a group); offline
    (``wandb sync`` later) when no API key is configured. The run folder's figures go up at the end."""

    def __init__(self, cfg: DictConfig, run_path: Path) -> None:
        import wandb

        self.wandb, self.run_path = wandb, run_path
        mode = cfg.logger.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(
            project=cfg.logger.project,
            mode=mode,
            dir=str(run_path),
            group=sweep_group(cfg),
            name=f"{cfg.method.name}/{cfg.task.name}/seed{cfg.seed}",
            config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
            reinit="finish_previous",
        )

    def log(self, row: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=row.get("step"))

    def summary(self, results: dict[str, Any]) -> None:
        for key, value in results.items():
            if isinstance(value, int | float | str | dict):
                self.run.summary[key] = value

    def finish(self) -> None:
        figures = sorted(self.run_path.glob("*.png"))  # e.g. AFLoRA's freeze heatmap
        if figures:
            self.run.log({f"figures/{png.stem}": self.wandb.Image(str(png)) for png in figures})
        self.run.finish()
        # finish() returns before the service has flushed an offline run's event file; teardown waits for
        # it (measured: a second offline run in one process could read a 7-byte file right after finish)
        self.wandb.teardown()


def build_logger(cfg: DictConfig, run_path: Path) -> MetricsLogger:
    if cfg.logger.name == "none":
        return NullLogger()
    if cfg.logger.name == "wandb":
        return WandbLogger(cfg, run_path)
    raise ConfigError(f"logger={cfg.logger.name!r} is not allowed; allowed: none, wandb")
