"""Where metrics go besides the run folder: nothing (``logger=none``) or Weights & Biases."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

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


class WandbLogger:
    """One W&B run per job; offline (``wandb sync`` later) when no API key is configured."""

    def __init__(self, cfg: DictConfig, run_path: Path) -> None:
        import wandb

        mode = cfg.logger.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(
            project=cfg.logger.project,
            mode=mode,
            dir=str(run_path),
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
        self.run.finish()


def build_logger(cfg: DictConfig, run_path: Path) -> MetricsLogger:
    if cfg.logger.name == "none":
        return NullLogger()
    if cfg.logger.name == "wandb":
        return WandbLogger(cfg, run_path)
    raise ConfigError(f"logger={cfg.logger.name!r} is not allowed; allowed: none, wandb")
