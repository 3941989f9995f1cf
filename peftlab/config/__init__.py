"""Typed schemas of the config groups, the check that runs them before any work, and helpers to compose
the config outside the CLI (tests, scripts).

``check_config`` refuses a bad value where it enters: every group's keys are compared with its schema
(an unknown key, e.g. ``+schedule.lrr=1``, is refused with the allowed ones) and the schema's
``__post_init__`` checks each value's type and range (one ConfigError line: key, value, what is allowed).
Methods check their own config class the same way (``methods.base.build_method``), tasks through
``Task.config_class``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional  # OmegaConf 2.3 needs Optional[...], not X | None

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from peftlab import checks
from peftlab.errors import ConfigError

# The config groups ship inside the package (``peftlab/conf``: a link to the checkout's ``conf/``, copied
# into a wheel as package data), so an installed peftlab finds them as an editable checkout does.
CONF_DIR = Path(__file__).parent.parent / "conf"


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
    # fp32 | bf16 | fp16: autocast of the forwards (fp16 with a gradient scaler); trained tensors and
    # optimizer state stay fp32. A bf16/fp16 base (model.dtype) autocasts to its dtype even with fp32.
    precision: str = "fp32"
    # examples per forward/backward: the gradients of schedule.batch_size examples are accumulated over
    # batch_size / micro_batch_size micro-batches per optimizer step (null: the whole batch at once)
    micro_batch_size: Optional[int] = None  # noqa: UP045
    activation_checkpointing: bool = False  # recompute each block's activations in the backward (less memory)
    compile: bool = False  # torch.compile the training forward (methods with per-step hooks are refused)
    # step: the warmup/decay schedule advances every optimizer step | epoch: once per epoch, as SPSFT's code
    # steps its scheduler (the LR then stays near its peak: ~2e-5 throughout its GLUE runs)
    scheduler_step: str = "step"
    lr_scheduler: str = "linear"  # after the warmup: linear | cosine | constant (transformers')
    # the cosine's floor (SPSFT's vision runs: 1e-9; with scheduler_step=epoch the cosine spans the epochs,
    # as torch's CosineAnnealingLR(T_max=epochs))
    min_lr: float = 0.0
    # Per-task or per-method values (a paper's table) live in conf/experiment presets, not here: a group
    # file depends on no other group's values.

    def __post_init__(self) -> None:
        for key in ("lr", "adam_eps"):
            checks.number(f"schedule.{key}", getattr(self, key), above=0)
        checks.number("schedule.head_lr", self.head_lr, above=0, optional=True)
        checks.number("schedule.weight_decay", self.weight_decay, at_least=0)
        checks.numbers("schedule.adam_betas", self.adam_betas, 2)
        for i, beta in enumerate(self.adam_betas):
            checks.number(f"schedule.adam_betas[{i}]", beta, at_least=0, below=1)
        checks.number("schedule.warmup_ratio", self.warmup_ratio, at_least=0, at_most=1)
        checks.number("schedule.max_grad_norm", self.max_grad_norm, above=0, optional=True)
        checks.integer("schedule.epochs", self.epochs, minimum=0)  # 0: evaluate the untrained model
        for key in ("batch_size", "eval_batch_size", "log_every_steps"):
            checks.integer(f"schedule.{key}", getattr(self, key), minimum=1)
        for key in ("max_steps", "eval_every_steps"):
            checks.integer(f"schedule.{key}", getattr(self, key), minimum=1, optional=True)
        # room for the special tokens ([CLS] a [SEP] b [SEP]) and some text
        checks.integer("schedule.max_seq_length", self.max_seq_length, minimum=4)
        checks.choice("schedule.precision", self.precision, ("fp32", "bf16", "fp16"))
        checks.integer("schedule.micro_batch_size", self.micro_batch_size, minimum=1, optional=True)
        checks.boolean("schedule.activation_checkpointing", self.activation_checkpointing)
        checks.boolean("schedule.compile", self.compile)
        checks.choice("schedule.scheduler_step", self.scheduler_step, ("step", "epoch"))
        checks.choice("schedule.lr_scheduler", self.lr_scheduler, ("linear", "cosine", "constant"))
        checks.number("schedule.min_lr", self.min_lr, at_least=0, below=self.lr)


@dataclass
class CheckpointSchema:
    """``checkpoint.*``: how often a run writes what ``resume=true`` needs, and how many stay."""

    every_steps: Optional[int] = None  # noqa: UP045 - null: no checkpoints
    keep: int = 2

    def __post_init__(self) -> None:
        checks.integer("checkpoint.every_steps", self.every_steps, minimum=1, optional=True)
        checks.integer("checkpoint.keep", self.keep, minimum=1)


@dataclass
class DistributedSchema:
    """``distributed.*``: how ``torchrun`` processes share the model."""

    strategy: str = "ddp"  # ddp | fsdp

    def __post_init__(self) -> None:
        checks.choice("distributed.strategy", self.strategy, ("ddp", "fsdp"))


def check_group(node: DictConfig, schema: type, prefix: str) -> Any:
    """``node`` as an instance of the dataclass ``schema``: unknown keys are refused with the allowed
    ones; the schema's ``__post_init__`` checks the values."""
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    fields = {f.name for f in dataclasses.fields(schema)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{prefix}: unknown option(s) {unknown}; allowed: {sorted(fields)}")
    return schema(**values)


def check_run_options(cfg: DictConfig) -> None:
    """The top-level keys (conf/config.yaml)."""
    checks.integer("seed", cfg.seed)
    for key in ("overwrite", "save_adapter", "eval_only", "progress_bar", "curves"):
        checks.boolean(key, cfg[key])
    checks.boolean("measure.flops", cfg.measure.flops)
    checks.text("data_root", cfg.data_root, optional=True)
    checks.text("load_from", cfg.load_from, optional=True)
    if not isinstance(cfg.resume, bool):
        checks.text("resume", cfg.resume)  # true | false | a run folder's path
    if cfg.load_from and not cfg.eval_only:
        raise ConfigError(
            f"load_from={cfg.load_from} is read only with eval_only=true (re-evaluate that run); "
            "training does not start from a saved adapter: add eval_only=true or drop load_from"
        )
    if cfg.eval_only and cfg.resume:
        raise ConfigError(
            f"eval_only=true and resume={cfg.resume} are exclusive: evaluate a finished run or resume a "
            "killed one"
        )


def check_model(model: DictConfig) -> None:
    """The model keys every model config has (the rest are read, and checked, when it is built)."""
    from peftlab.models.build import resolve_dtype  # imports transformers: only when checking a run
    from peftlab.models.heads import HEAD_POOLERS, POOLER_ACTIVATIONS

    resolve_dtype(model.dtype)
    checks.number("model.head_dropout", model.head_dropout, at_least=0, below=1)
    checks.number("model.dropout", model.get("dropout"), at_least=0, below=1, optional=True)
    checks.choice("model.head_pooler", model.get("head_pooler", "trainable"), HEAD_POOLERS)
    checks.choice("model.pooler_activation", model.get("pooler_activation", "tanh"), POOLER_ACTIVATIONS)


def check_config(cfg: DictConfig) -> None:
    """Every group of a composed config, before any work: one ConfigError for the first bad value."""
    from peftlab.registry import TASKS

    check_run_options(cfg)
    check_group(cfg.schedule, ScheduleSchema, "schedule")
    check_group(cfg.checkpoint, CheckpointSchema, "checkpoint")
    strategy = check_group(cfg.get("distributed") or {}, DistributedSchema, "distributed").strategy
    if strategy == "fsdp" and cfg.checkpoint.every_steps:
        raise ConfigError(
            f"checkpoint.every_steps={cfg.checkpoint.every_steps} with distributed.strategy=fsdp: "
            "checkpoints of sharded training are not written yet; allowed: checkpoint.every_steps=null, "
            "or distributed.strategy=ddp"
        )
    check_group(cfg.task, TASKS.get(cfg.task.name).config_class, f"task {cfg.task.name}")
    check_model(cfg.model)


def register_schemas() -> None:
    ConfigStore.instance().store(name="schedule_schema", node=ScheduleSchema)


def conf_dir() -> Path:
    """The folder of the config groups (``config.yaml``, ``method/``, ...), inside the package."""
    if not (CONF_DIR / "config.yaml").is_file():
        raise FileNotFoundError(
            f"config directory {CONF_DIR} not found or without config.yaml: reinstall peftlab "
            "(pip install . or pip install -e .); in a checkout peftlab/conf links to conf/"
        )
    return CONF_DIR.resolve()


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The config the CLI would compose for ``overrides`` (without Hydra's runtime values)."""
    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        return compose(config_name="config", overrides=overrides or [])
