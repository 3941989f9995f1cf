"""The check of a composed config, before any work: every group is turned into its typed schema once.

``check_config`` refuses a bad value where it enters: every group's keys are compared with its schema
(an unknown key, e.g. ``+schedule.lrr=1``, is refused with the allowed ones) and the schema's
``__post_init__`` checks each value's type and range (one ConfigError line: key, value, what is allowed).
Methods and tasks are checked the same way, against ``Method.config_class`` and ``Task.config_class``.
What it returns, a ``RunConfig``, is what run/, train/ and models/ read: defaults live in the schemas.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from peftlab.config.schemas import (
    CheckpointSchema,
    DistributedSchema,
    LoggerSchema,
    MeasureSchema,
    ModelSchema,
    RunOptions,
    ScheduleSchema,
)
from peftlab.errors import ConfigError

# conf/experiment presets' tables that their group values interpolate from (per task, per method)
PRESET_TABLES = ("per_task", "per_method")


def checked(schema: type, values: dict[str, Any], prefix: str) -> Any:
    """``schema(**values)``: unknown keys are refused with the allowed ones; the schema's
    ``__post_init__`` checks the values. The one unknown-option check of configs and methods."""
    fields = {f.name for f in dataclasses.fields(schema)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{prefix}: unknown option(s) {unknown}; allowed: {sorted(fields)}")
    return schema(**values)


def check_group(node: DictConfig | dict | None, schema: type, prefix: str) -> Any:
    """The config group ``node`` (absent: every default) as an instance of the dataclass ``schema``."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    assert isinstance(values, dict)
    return checked(schema, values, prefix)


@dataclass
class RunConfig:
    """A checked run config: the typed groups, and the composed DictConfig they came from (``raw``, what
    config.yaml saves and resume, eval_only and export read back and check again)."""

    raw: DictConfig
    options: RunOptions
    schedule: ScheduleSchema
    checkpoint: CheckpointSchema
    measure: MeasureSchema
    distributed: DistributedSchema
    logger: LoggerSchema
    model: ModelSchema
    task: Any  # the task's config_class instance (tasks/base.py TaskConfig)
    task_name: str
    method: Any  # the method's config_class instance (methods/base.py MethodConfig)
    method_name: str

    def set(self, key: str, value: Any) -> None:
        """A top-level option set during the run (run_id, output_dir): in the typed options and in raw."""
        setattr(self.options, key, value)
        with open_dict(self.raw):
            self.raw[key] = value


def _task(cfg: DictConfig) -> Any:
    from peftlab.registry import TASKS  # imports every task: only when a run is checked

    return check_group(cfg.task, TASKS.get(cfg.task.name).config_class, f"task {cfg.task.name}")


def _method(cfg: DictConfig) -> Any:
    from peftlab.registry import METHODS  # imports every method: only when a run is checked

    values = OmegaConf.to_container(cfg.method, resolve=True)
    assert isinstance(values, dict)
    name = values.pop("name")
    method = checked(METHODS.get(name).config_class, values, f"method {name}")
    inner = getattr(method, "peft", None)  # a wrapped module (Light-PEFT's): checked now, not when built
    if isinstance(inner, dict) and inner.get("name") in METHODS.names():
        inner = dict(inner)
        inner_name = inner.pop("name")
        checked(METHODS.get(inner_name).config_class, inner, f"method {name} peft {inner_name}")
    return method


def _options(cfg: DictConfig) -> RunOptions:
    groups = {"schedule", "checkpoint", "measure", "distributed", "logger", "model", "task", "method"}
    groups |= set(PRESET_TABLES)
    # output_dir is Hydra's run folder: unknown (None) when composed outside Hydra's runtime
    values = {
        k: OmegaConf.select(cfg, k, throw_on_resolution_failure=False)
        for k in cfg
        if k not in groups and k != "hydra"
    }
    return checked(RunOptions, values, "config")


def check_config(cfg: DictConfig) -> RunConfig:
    """Every group of a composed config, before any work: one ConfigError for the first bad value."""
    options = _options(cfg)
    schedule = check_group(cfg.schedule, ScheduleSchema, "schedule")
    checkpoint = check_group(cfg.get("checkpoint"), CheckpointSchema, "checkpoint")
    distributed = check_group(cfg.get("distributed"), DistributedSchema, "distributed")
    if distributed.strategy == "fsdp" and checkpoint.every_steps:
        raise ConfigError(
            f"checkpoint.every_steps={checkpoint.every_steps} with distributed.strategy=fsdp: "
            "checkpoints of sharded training are not written yet; allowed: checkpoint.every_steps=null, "
            "or distributed.strategy=ddp"
        )
    return RunConfig(
        raw=cfg,
        options=options,
        schedule=schedule,
        checkpoint=checkpoint,
        measure=check_group(cfg.get("measure"), MeasureSchema, "measure"),
        distributed=distributed,
        logger=check_group(cfg.get("logger"), LoggerSchema, "logger"),
        model=check_group(cfg.model, ModelSchema, "model"),
        task=_task(cfg),
        task_name=cfg.task.name,
        method=_method(cfg),
        method_name=cfg.method.name,
    )
