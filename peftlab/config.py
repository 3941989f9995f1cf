"""Typed schemas for the config groups where a wrong type would otherwise pass silently, and helpers
to compose the config outside the CLI (tests, scripts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional  # OmegaConf 2.3 needs Optional[...], not X | None

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@dataclass
class ScheduleSchema:
    """Optimizer and schedule. ``conf/schedule/*.yaml`` start from this schema, so e.g.
    ``schedule.lr=abc`` fails at composition."""

    name: str = "default"
    lr: float = 5e-4
    head_lr: Optional[float] = None  # noqa: UP045 - classification head LR; null: same as lr
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    warmup_ratio: float = 0.06
    max_grad_norm: Optional[float] = 1.0  # noqa: UP045 - null: no clipping
    epochs: int = 3
    max_steps: Optional[int] = None  # noqa: UP045 - set: overrides epochs
    batch_size: int = 32
    eval_batch_size: int = 128
    max_seq_length: int = 128
    eval_every_steps: Optional[int] = None  # noqa: UP045 - null: after each epoch
    log_every_steps: int = 10
    precision: str = "fp32"  # fp32 | bf16 (autocast for forward passes; parameters and optimizer stay fp32)
    # step: the warmup/decay schedule advances every optimizer step | epoch: once per epoch, as SPSFT's code
    # steps its scheduler (the LR then stays near its peak: ~2e-5 throughout its GLUE runs)
    scheduler_step: str = "step"
    # Per-task or per-method values (a paper's table) live in conf/experiment presets, not here: a group
    # file depends on no other group's values.


def register_schemas() -> None:
    ConfigStore.instance().store(group="schedule", name="_schema", node=ScheduleSchema)


def conf_dir() -> Path:
    if not CONF_DIR.is_dir():
        raise FileNotFoundError(
            f"config directory {CONF_DIR} not found: install peftlab editable (pip install -e .), "
            "as `make setup` does, so conf/ is found next to the package"
        )
    return CONF_DIR


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The config the CLI would compose for ``overrides`` (without Hydra's runtime values)."""
    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        return compose(config_name="config", overrides=overrides or [])
