"""The typed schema of every config group: each key once, with its default and what it means.

``conf/schedule/*.yaml`` and ``conf/model/*.yaml`` start from these (``register_schemas``), so a value of
the wrong type fails at composition; each ``__post_init__`` checks ranges and choices (one ConfigError
line: key, value, what is allowed). Tasks and methods keep theirs beside their code (``Task.config_class``,
``Method.config_class``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional  # OmegaConf 2.3 needs Optional[...], not X | None

from omegaconf import MISSING

from peftlab import checks
from peftlab.errors import ConfigError

# allowed values the model builder maps to code (models/build.py, models/heads.py)
MODEL_SOURCES = ("package", "hub", "random")
MODALITIES = ("text", "image")
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # float16: autocast with a loss scaler (train/precision.py)
POOLINGS = ("mean", "cls", "pooler")
HEAD_POOLERS = ("trainable", "frozen")
# of a fresh pooler (a backbone without one): tanh as BERT's pooler, gelu as DeBERTa's ContextPooler
POOLER_ACTIVATIONS = ("tanh", "gelu")
STRATEGIES = ("ddp", "fsdp")
# the largest seed every RNG peftlab seeds takes as it is (random, numpy, torch; numpy's is the narrowest)
SEED_MAX = 2**32 - 1


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
    # fp32 matmuls on CUDA (torch.set_float32_matmul_precision): high = TF32 on Ampere and later (10-bit
    # mantissa inputs, fp32 accumulation), highest = full fp32 (torch's default); not applied on CPU
    matmul_precision: str = "highest"
    loader_workers: int = 4  # CUDA only: processes reading and collating batches (pinned); CPU: none
    # step: the warmup/decay schedule advances every optimizer step | epoch: once per epoch, as SPSFT's code
    # steps its scheduler (the LR then stays near its peak: ~2e-5 throughout its GLUE runs)
    scheduler_step: str = "step"
    lr_scheduler: str = "linear"  # after the warmup: linear | cosine | constant (transformers')
    # the cosine's floor (SPSFT's vision runs: 1e-9; with scheduler_step=epoch the cosine spans the epochs,
    # as torch's CosineAnnealingLR(T_max=epochs))
    min_lr: float = 0.0
    # LoRA+ (peft's create_loraplus_optimizer): low-rank B factors and 1-D tensors train at ratio x lr
    loraplus_lr_ratio: Optional[float] = None  # noqa: UP045 - null: off
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
        checks.number("schedule.loraplus_lr_ratio", self.loraplus_lr_ratio, above=0, optional=True)
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
        checks.choice("schedule.matmul_precision", self.matmul_precision, ("highest", "high"))
        checks.integer("schedule.loader_workers", self.loader_workers, minimum=0)
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
        checks.choice("distributed.strategy", self.strategy, STRATEGIES)


@dataclass
class MeasureSchema:
    """``measure.*``: what a run measures besides its metrics."""

    flops: bool = True  # count FLOPs of the first training step (torch.utils.flop_counter)

    def __post_init__(self) -> None:
        checks.boolean("measure.flops", self.flops)


@dataclass
class LoggerSchema:
    """``logger.*`` (conf/logger): where metrics go besides the run folder."""

    name: str = "none"  # none | wandb
    project: str = "peftlab"
    mode: Optional[str] = None  # noqa: UP045 - online | offline | disabled; null: offline without WANDB_API_KEY
    group: Optional[str] = None  # noqa: UP045 - null: the sweep folder's name in a multirun

    def __post_init__(self) -> None:
        checks.choice("logger.name", self.name, ("none", "wandb"))
        if self.mode is not None:
            checks.choice("logger.mode", self.mode, ("online", "offline", "disabled"))


@dataclass
class ModelSchema:
    """``model.*``: which backbone, where its weights come from, and the head on top.
    ``conf/model/*.yaml`` start from this schema and set only what differs from these defaults."""

    name: str = MISSING
    source: str = MISSING  # package (a pip package's folder, offline) | hub (a hub id) | random (tests)
    # package: 'pkg_name/sub/dir' inside the installed package; hub: the hub id; random: unused
    path: Optional[str] = None  # noqa: UP045
    gguf_file: Optional[str] = None  # noqa: UP045 - a GGUF file inside path (dequantised to fp32 by transformers)
    # false: the same architecture with random weights (efficiency, not accuracy); null: true unless
    # source is random (which has no weights to load)
    # (Any: a structured bool would read model.pretrained=yes as true; __post_init__ refuses it)
    pretrained: Any = None
    # N: keep the first N blocks (null: all). Any: models/architecture.keep_layers refuses a bad value
    # naming the model's layer count (a structured int would refuse it at composition, without it)
    num_layers: Any = None
    # random / pretrained=false without a cached hub tokenizer: this shipped one (null: MiniLM's)
    tokenizer: Optional[str] = None  # noqa: UP045
    architecture: Optional[str] = None  # noqa: UP045 - the transformers model_type (or efficientnet_lite0)
    config: Optional[dict[str, Any]] = None  # noqa: UP045 - architecture values (the hub config.json, a tiny shape)
    modality: str = "text"  # text | image
    pooling: str = "mean"  # mean | cls | pooler (CLS + dense/tanh pooler, as BertForSequenceClassification)
    # trainable | frozen: the pooler (pooling: pooler) gets no gradient, as AFLoRA's DeBERTa runs
    head_pooler: str = "trainable"
    pooler_activation: str = "tanh"  # of a fresh pooler (backbone without one): tanh (BERT) | gelu (DeBERTa)
    head_dropout: float = 0.0
    dropout: Optional[float] = None  # noqa: UP045 - backbone hidden/attention dropout; null: the pretrained one
    drop_connect_rate: float = 0.0  # EfficientNet: stochastic depth of the last block (scaled down before it)
    image_size: Optional[int] = None  # noqa: UP045 - image models: input resolution
    image_mean: Optional[list[float]] = None  # noqa: UP045 - image models: per-channel normalisation
    image_std: Optional[list[float]] = None  # noqa: UP045
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    dtype: str = "float32"  # of the frozen base: float32 | bfloat16 | float16

    def __post_init__(self) -> None:
        checks.text("model.name", self.name)
        checks.choice("model.source", self.source, MODEL_SOURCES)
        checks.choice("model.modality", self.modality, MODALITIES)
        checks.choice("model.dtype", self.dtype, DTYPE_NAMES)
        checks.choice("model.pooling", self.pooling, POOLINGS)
        checks.choice("model.head_pooler", self.head_pooler, HEAD_POOLERS)
        checks.choice("model.pooler_activation", self.pooler_activation, POOLER_ACTIVATIONS)
        checks.number("model.head_dropout", self.head_dropout, at_least=0, below=1)
        checks.number("model.dropout", self.dropout, at_least=0, below=1, optional=True)
        checks.number("model.drop_connect_rate", self.drop_connect_rate, at_least=0, below=1)
        checks.integer("model.image_size", self.image_size, minimum=1, optional=True)
        if self.pretrained is not None:
            checks.boolean("model.pretrained", self.pretrained)
        if self.pretrained and self.source == "random":
            raise ConfigError(
                f"model {self.name!r} has no weights (source: random); model.pretrained must be false"
            )

    @property
    def loads_weights(self) -> bool:
        """``pretrained``, which is true unless set or the source is random."""
        return self.source != "random" if self.pretrained is None else self.pretrained


@dataclass
class RunOptions:
    """The top-level keys of conf/config.yaml (its comments say what each does)."""

    seed: int = 42
    data_root: Optional[str] = None  # noqa: UP045
    output_dir: Optional[str] = None  # noqa: UP045 - the run folder (hydra.run.dir; null outside Hydra)
    overwrite: bool = False
    save_adapter: bool = True
    curves: bool = True
    eval_only: bool = False
    load_from: Optional[str] = None  # noqa: UP045
    progress_bar: bool = True
    resume: Any = False  # true | false | a run folder's path
    run_id: Optional[str] = None  # noqa: UP045 - set when a run starts: its checkpoints carry it

    def __post_init__(self) -> None:
        allowed = f"an integer 0 <= seed <= {SEED_MAX} (2**32 - 1, numpy's range)"
        checks.integer("seed", self.seed)
        if not 0 <= self.seed <= SEED_MAX:
            raise checks.refuse("seed", self.seed, allowed)
        for key in ("overwrite", "save_adapter", "eval_only", "progress_bar", "curves"):
            checks.boolean(key, getattr(self, key))
        checks.text("data_root", self.data_root, optional=True)
        checks.text("load_from", self.load_from, optional=True)
        if not isinstance(self.resume, bool):
            checks.text("resume", self.resume)
        if self.load_from and not self.eval_only:
            raise ConfigError(
                f"load_from={self.load_from} is read only with eval_only=true (re-evaluate that run); "
                "training does not start from a saved adapter: add eval_only=true or drop load_from"
            )
        if self.eval_only and self.resume:
            raise ConfigError(
                f"eval_only=true and resume={self.resume} are exclusive: evaluate a finished run or resume "
                "a killed one"
            )
