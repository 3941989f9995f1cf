"""What the three loops share: the settings, peftlab's composed config, the tokenized examples, their
order, the model at step 0, and the FLOPs of a step."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Sampler
from transformers import AutoModel
from transformers.modeling_outputs import SequenceClassifierOutput

from peftlab.config import check_config, compose_config
from peftlab.errors import ConfigError
from peftlab.methods.baselines.method import FullFineTuning
from peftlab.methods.lora.method import Lora
from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir
from peftlab.tasks.batching import train_sampling
from peftlab.train.efficiency import count_flops
from peftlab.train.trainer import Trainer as PeftlabTrainer

METHODS = (Lora, FullFineTuning)
# peftlab's documented fast options on CPU (bf16 autocast: fast with AVX-512-BF16/AMX only; batches of
# similar length); torch.compile is another (--override schedule.compile=true), slow to compile on CPU
FAST_OPTIONS = {"precision": "bf16", "group_by_length": True}
METHOD_NAMES = tuple(m.registered_name for m in METHODS)  # type: ignore[attr-defined]


@dataclass
class Settings:
    """The measured setting (issue defaults: MiniLM, MRPC, 640 examples, batch 32, 1 epoch)."""

    model: str = "minilm"
    task: str = "mrpc"
    method: str = Lora.registered_name  # type: ignore[attr-defined]
    train_samples: int | None = 640
    batch_size: int = 32
    max_length: int = 128
    epochs: int = 1
    steps: int | None = None  # set: this many optimizer steps instead of epochs
    precision: str = "fp32"
    group_by_length: bool = False
    repeats: int = 1
    threads: int | None = 1
    seed: int = 42
    overrides: list[str] = field(default_factory=list)  # more Hydra overrides for peftlab's config
    # True: peftlab's loop with FAST_OPTIONS, the Trainer and plain loops at the settings above (None
    # rather than False otherwise, so that the stored runs without the key match the same filter)
    fast_vs_default: bool | None = None
    # with fast_vs_default: the FAST_OPTIONS keys peftlab's loop takes (None: all of them, as stored
    # before this setting existed), e.g. ["group_by_length"] for peftlab in fp32 with length grouping
    fast_options: list[str] | None = None

    def peftlab_side(self) -> Settings:
        """The settings of peftlab's loop: these, or with the fast options (``fast_vs_default``)."""
        if not self.fast_vs_default:
            return self
        keys = self.fast_options or list(FAST_OPTIONS)
        return dataclasses.replace(self, **{k: FAST_OPTIONS[k] for k in keys})

    def peftlab_overrides(self, output_dir: str) -> list[str]:
        samples = self.train_samples if self.train_samples else "null"
        return [
            f"model={self.model}",
            f"task={self.task}",
            f"method={self.method}",
            f"seed={self.seed}",
            f"schedule.batch_size={self.batch_size}",
            f"schedule.max_seq_length={self.max_length}",
            f"schedule.epochs={self.epochs}",
            f"schedule.max_steps={self.steps or 'null'}",
            f"schedule.precision={self.precision}",
            f"task.max_train_samples={samples}",
            f"task.group_by_length={str(self.group_by_length).lower()}",
            "model.device=cpu",
            "progress_bar=false",
            "curves=false",
            "save_adapter=false",
            f"output_dir={output_dir}",
            *self.overrides,
        ]


def peftlab_config(settings: Settings, output_dir: str) -> DictConfig:
    """The config a run of this setting composes, checked as a run checks it."""
    cfg = compose_config(settings.peftlab_overrides(output_dir))
    check_config(cfg)
    sched = cfg.schedule
    unsupported = {
        "schedule.lr_scheduler": sched.lr_scheduler != "linear",
        "schedule.head_lr": sched.head_lr is not None,
        "schedule.scheduler_step": sched.scheduler_step != "step",
        "schedule.micro_batch_size": sched.micro_batch_size is not None,
        "model.pooling": cfg.model.pooling not in ("mean", "cls"),
    }
    for key, bad in unsupported.items():
        if bad:
            raise ConfigError(
                f"{key}: vs_trainer rebuilds the Trainer and plain loops for a linear schedule, one LR, "
                "per-step scheduling, no micro-batches and mean or cls pooling; allowed: the defaults"
            )
    return cfg


def new_peftlab_trainer(settings: Settings) -> tuple[PeftlabTrainer, tempfile.TemporaryDirectory]:
    """peftlab's trainer, built as a run builds it, in a temporary run folder (the caller removes it)."""
    folder = tempfile.TemporaryDirectory(prefix="vs_trainer_")
    cfg = peftlab_config(settings, folder.name)
    run_dir = RunDir(Path(folder.name))
    run_dir.start(overwrite=True)
    trainer = build_trainer(cfg, run_dir)
    if not isinstance(trainer.method, METHODS):
        raise ConfigError(f"--method {settings.method} is not allowed; allowed: {', '.join(METHOD_NAMES)}")
    return trainer, folder


@dataclass
class Shared:
    """Built once from a reference peftlab trainer: the examples every loop trains and evaluates on."""

    cfg: DictConfig
    trainer: PeftlabTrainer  # the reference: its loaders, task and step-0 model
    initial_state: dict[str, torch.Tensor]
    epochs: list[list[list[int]]]  # peftlab's batches (example indices), per epoch (the last: whole)
    total_steps: int

    @property
    def dataset(self) -> Any:
        return self.trainer.train_loader.dataset

    @property
    def collate(self) -> Any:
        return self.trainer.train_loader.collate_fn

    @property
    def lora(self) -> bool:
        return isinstance(self.trainer.method, Lora)


def shared_data(settings: Settings) -> tuple[Shared, tempfile.TemporaryDirectory]:
    trainer, folder = new_peftlab_trainer(settings)
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    lengths = [len(item["input_ids"]) for item in trainer.train_loader.dataset]
    total = trainer.state.total_steps
    epochs = peftlab_batches(lengths, trainer.cfg.raw, total)
    return Shared(trainer.cfg.raw, trainer, state, epochs, total), folder


def peftlab_batches(lengths: list[int], cfg: DictConfig, total_steps: int) -> list[list[list[int]]]:
    """The batches peftlab's loader yields in each epoch that ``total_steps`` reach into: a loader over
    the indices built as ``task.build_loader`` builds the training loader (same sampling, same seed)."""
    sched = cfg.schedule
    generator = torch.Generator().manual_seed(cfg.seed)
    sampling = train_sampling(lengths, sched.batch_size, generator, bool(cfg.task.group_by_length))
    loader = DataLoader(range(len(lengths)), batch_size=sched.batch_size, collate_fn=list, **sampling)
    epochs: list[list[list[int]]] = []
    while sum(map(len, epochs)) < total_steps:
        epochs.append(list(loader))
    return epochs


class FixedBatches(Sampler[list[int]]):
    """Yields the given batches, the next epoch's at each ``iter``; ``flat`` yields indices instead
    (a sampler for a DataLoader that batches itself, such as the Trainer's)."""

    def __init__(self, epochs: list[list[list[int]]], flat: bool = False) -> None:
        self.epochs, self.flat, self.epoch = epochs, flat, 0

    def __len__(self) -> int:
        batches = self.epochs[0]  # every epoch has the same batch count
        return sum(map(len, batches)) if self.flat else len(batches)

    def __iter__(self):
        batches = self.epochs[min(self.epoch, len(self.epochs) - 1)]
        self.epoch += 1
        for batch in batches:
            yield from (batch if self.flat else [batch])


class PooledClassifier(nn.Module):
    """A transformers backbone + the head of ``peftlab.models.heads`` (mean or [CLS] pooling, dropout,
    linear, fp32 loss); returns transformers' output, which the Trainer and peftlab's evaluation read."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str, dropout: float) -> None:
        super().__init__()
        self.backbone, self.num_labels, self.pooling = backbone, num_labels, pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.config.hidden_size, num_labels)

    def forward(self, input_ids, attention_mask, labels=None, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        else:
            pooled = hidden[:, 0]
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None and self.num_labels == 1:
            loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
        elif labels is not None:
            loss = F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def hf_model(shared: Shared) -> nn.Module:
    """The model of the Trainer and plain loops: transformers' AutoModel of the backbone's config, the
    pooling head, huggingface peft's LoRA (with the method's r, alpha, dropout, targets) or every
    parameter trained; weights set to peftlab's model at step 0 (checkpoint, head and LoRA init)."""
    from peft import LoraConfig, get_peft_model

    reference = shared.trainer.model
    config = copy.deepcopy(reference.backbone.config)
    backbone = AutoModel.from_config(config, attn_implementation=config._attn_implementation)
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # as peftlab's SequenceClassifier drops it when the head pools itself
    mcfg = shared.cfg.model
    model: nn.Module = PooledClassifier(backbone, reference.num_labels, mcfg.pooling, mcfg.head_dropout)
    if shared.lora:
        method = shared.cfg.method
        plain = Lora.config_class.init  # the default: A kaiming, B zero
        if method.init != plain or method.variant is not None:
            raise ConfigError(
                f"vs_trainer compares plain LoRA; allowed: method.init={plain}, method.variant=null"
            )
        lora = LoraConfig(
            r=method.rank,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            use_rslora=method.rslora,
            target_modules=list(method.target_modules),
            modules_to_save=["classifier"],
        )
        model = get_peft_model(model, lora)
    copy_initial_weights(shared.initial_state, model)
    return model.to(shared.trainer.device)


def canonical(name: str) -> str | None:
    """One name for a tensor of peftlab's model, the plain model and its peft wrapping."""
    name = name.removeprefix("base_model.model.").removeprefix("head.")
    for peft_part, plain in ((".lora_A.default.weight", ".lora_A"), (".lora_B.default.weight", ".lora_B")):
        name = name.replace(peft_part, plain)
    return name.replace(".modules_to_save.default.", ".").replace(".original_module.", ".")


def copy_initial_weights(source: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Every tensor of ``model`` from peftlab's step-0 state; a tensor with no source is an error."""
    by_name = {canonical(k): v for k, v in source.items()}
    missing = []
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            value = by_name.get(canonical(name))
            if value is None or value.shape != tensor.shape:
                missing.append(name)
            else:
                tensor.copy_(value)
    if missing:
        raise ConfigError(f"vs_trainer: no step-0 value in peftlab's model for {missing[:5]}")


def flops_per_example(model: nn.Module, vocab_size: int, lengths: tuple[int, int, int] = (8, 16, 24)):
    """FLOPs of forward + backward per example as a function of the padded length L: a matmul count is
    exactly c0 + c1 L + c2 L^2 per example (linear layers, attention scores), so three counts with
    torch's counter (``count_flops``) fix it. Returns L -> FLOPs (exact, by Lagrange interpolation)."""
    batch = 2
    counts = []
    for length in lengths:
        ids = torch.full((batch, length), min(5, vocab_size - 1), dtype=torch.long)
        inputs = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": torch.zeros(batch).long(),
        }
        if model.num_labels == 1:
            inputs["labels"] = inputs["labels"].float()
        counts.append(Fraction(count_flops(lambda inputs=inputs: model(**inputs).loss.backward()), batch))
    model.zero_grad(set_to_none=True)

    def at(length: int) -> float:
        total = Fraction(0)
        for i, (li, ci) in enumerate(zip(lengths, counts, strict=True)):
            term = ci
            for j, lj in enumerate(lengths):
                if j != i:
                    term *= Fraction(length - lj, li - lj)
            total += term
        return float(total)

    return at
