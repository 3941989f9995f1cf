"""The method protocol: how a PEFT method plugs into the one training loop.

Before training, ``prepare`` may look at training batches (importance scores). The loop calls, in
order: ``attach`` (wrap layers, choose trainable params) -> per step
``extra_loss`` -> backward -> ``after_backward`` (gradients are there) -> optimizer step ->
``after_step`` -> ... -> ``on_train_end``. A hook that freezes, unfreezes or replaces parameters
calls ``state.params_changed()``; the loop then rebuilds the optimizer from ``param_groups`` and
keeps the optimizer state only of the parameters that are still trained.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from peftlab import distributed
from peftlab.blocks.lowrank import LowRankLinear
from peftlab.blocks.params import default_param_groups, trainable_named_parameters
from peftlab.blocks.protocol import adapter_layers, adapter_state_dict, fold_adapters, load_adapter_state_dict
from peftlab.config.check import checked
from peftlab.errors import ConfigError
from peftlab.registry import METHODS


@dataclass
class MethodConfig:
    """Base of every method's config; fields come from ``conf/method/<name>.yaml``."""

    def __post_init__(self) -> None:
        """Subclasses check their values here and raise ConfigError."""


@dataclass
class TrainState:
    """What hooks may read about the run, and the one thing they may tell the loop."""

    model: nn.Module
    step: int = 0  # optimizer steps done
    total_steps: int = 0
    steps_per_epoch: int = 0
    rebuild_requested: bool = False

    @property
    def epoch(self) -> float:
        return self.step / max(self.steps_per_epoch, 1)

    def params_changed(self) -> None:
        """Parameters were frozen, unfrozen or replaced: the loop rebuilds the optimizer after the hook."""
        self.rebuild_requested = True


@dataclass
class CalibrationData:
    """Training batches a method may look at before training (importance scores, never eval data).

    ``loader`` has its own shuffling generator, so reading it does not change the training order."""

    loader: Iterable[dict[str, torch.Tensor]]
    device: torch.device
    num_labels: int

    def stream(self) -> Iterator[dict[str, torch.Tensor]]:
        """The batches in order (this rank's share of each, when data-parallel), on the device."""
        for batch in self.loader:
            yield {k: v.to(self.device) for k, v in distributed.shard(batch).items()}

    def batches(self, limit: int) -> list[dict[str, torch.Tensor]]:
        """The first ``limit`` batches."""
        return list(islice(self.stream(), limit))


@dataclass
class MethodReport:
    """What a method reports when a run ends: ``results`` go into results.json's ``method_report``;
    ``files`` (name -> content) are written into the run folder, atomically, by the run folder."""

    results: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """A method's tensors file (scores, masks), on the CPU, as its report hands it to the run folder."""
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def json_bytes(data: Any) -> bytes:
    """A method's JSON file, as its report hands it to the run folder."""
    return (json.dumps(data, indent=1) + "\n").encode()


class Method:
    """A PEFT method. Subclasses set ``config_class`` and override the hooks they need."""

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    output_files: ClassVar[tuple[str, ...]] = ()  # what ``report`` writes (a new run deletes them)
    # What the memory estimate (models/footprint.py) needs before the model is built:
    trains_backbone_weights: ClassVar[bool] = False  # every base weight trains (fp32 copies, Adam on all)
    backward_through_backbone: ClassVar[bool] = True  # False: only the head trains, no activations kept
    bench_states: ClassVar[tuple[str, ...]] = ()  # states a benchmark row may ask for (``@<state>``)
    # why ``python -m peftlab.export RUN --to peft`` refuses the method (``peft_export``)
    merged_only_reason: ClassVar[str] = "huggingface peft has no equivalent of it"

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

    # -- set-up ---------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Modify ``model`` in place and set ``requires_grad``. The head (``model.head``) is trained."""
        raise NotImplementedError

    def prepare(self, model: nn.Module, data: CalibrationData) -> None:
        """Look at training data before ``attach`` (e.g. score rows to train). Not called when a saved
        adapter is loaded instead of training; default: nothing."""

    def setup(self, model: nn.Module, data: CalibrationData | None = None) -> None:
        """Prepare (with training data, when training), then attach; a method must train something."""
        if data is not None:
            self.prepare(model, data)
        self.attach(model)
        if not trainable_named_parameters(model):
            raise ConfigError(f"method {type(self).__name__} left no trainable parameter")

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Trainable parameters split into optimizer groups; see ``peftlab.train.optim``."""
        return default_param_groups(model)

    def check_schedule(self, scheduled_steps: int, steps_per_epoch: int) -> None:
        """Before the first step: a ConfigError, or a warning, when the method's own schedule cannot work
        as meant in a run of this length (AFLoRA's freezing ramp). Default: any length works."""
        del scheduled_steps, steps_per_epoch

    def first_run_steps(self, scheduled_steps: int) -> int:
        """Steps of a separate run ahead of the ``scheduled_steps`` (Light-PEFT's estimation run, as the
        authors' scripts run it): the loop gives it its own LR schedule, then a fresh optimizer and a
        restarted schedule for the scheduled steps. Default 0: one run."""
        del scheduled_steps
        return 0

    # -- per step -------------------------------------------------------------------------------
    def extra_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """A term added to the task loss (e.g. an L1 penalty on masks)."""
        return None

    def after_backward(self, state: TrainState) -> None:
        """Gradients of this step are in ``.grad``; the optimizer has not stepped yet."""

    def after_step(self, state: TrainState) -> None:
        """The optimizer has stepped; ``state.step`` counts it."""

    def on_train_end(self, state: TrainState) -> None:
        """Training is over; evaluation and saving follow."""

    def report(self, state: TrainState, step_times: list[float]) -> MethodReport:
        """Method-specific results for results.json (``step_times[k - 1]``: seconds of step k) and the
        files (traces, figures) the run folder writes for the method (names in ``output_files``)."""
        return MethodReport()

    # -- saving ---------------------------------------------------------------------------------
    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Tensors that, loaded into a freshly attached model, reproduce the trained one: what every
        adapter layer lists as its own, the head, and any other trained parameter (``blocks/protocol``)."""
        return adapter_state_dict(model)

    def restore(self, model: nn.Module, run_dir: Path) -> None:
        """Before a saved adapter is loaded: rebuild from ``run_dir``'s files what training changed in the
        model's structure (e.g. pruning); default: nothing."""

    def load_adapter_state_dict(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        """Put saved tensors into a freshly attached model; every name must exist with the same shape."""
        load_adapter_state_dict(model, tensors)

    def state_dict(self) -> dict[str, Any]:
        """The method's own state for checkpoints (scores, schedules, masks)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        """Restore ``state_dict()`` into a freshly attached ``model`` (resuming a run), before its
        adapter tensors are loaded: structure first (frozen sets, pruning), then values."""
        del state, model

    # -- export and benchmarks ---------------------------------------------------------------------
    def peft_export(self, root: nn.Module) -> tuple[Any, dict[str, torch.Tensor]]:
        """The trained adapter as huggingface peft's config object and tensors in peft's naming
        (``base_model.model.<module>...``), module names relative to ``root``, the transformers model
        peft wraps. Default: refused, with the reason the method gives."""
        del root
        raise ConfigError(
            f"method {self.name!r} has no huggingface peft form: export it with --to merged only, "
            f"because {self.merged_only_reason}"
        )

    def merge_into_base(self, model: nn.Module) -> None:
        """Fold the trained adapter into the base weights (a merged export): every adapter layer replaced
        by its base layer with the adapter merged in (``fold_adapters``; ConfigError when one cannot)."""
        fold_adapters(model)

    def merged_structure(self) -> dict[str, Any] | None:
        """The structure change a merged export keeps (config.json records it; ``load_merged`` rebuilds
        it): ``{"heads": {block: kept units}, "ffn_channels": {block: kept channels}}`` as
        ``blocks.structure.keep_structure`` takes it; None: the base model's shapes (default)."""
        return None

    def bench_state(self, name: str, state: TrainState, step: Callable[[], None]) -> str:
        """Bring the method into state ``name`` (one of ``bench_states``) before a benchmark times it;
        ``step()`` runs one training step on the benchmark's batch. Returns a note for the row."""
        del state, step
        offered = ", ".join(f"@{s}" for s in self.bench_states) or "none"
        raise ConfigError(f"method {self.name} has no benchmark state @{name}; its states: {offered}")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.config)}

    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__)


def peft_linear_layers(root: nn.Module, method: str) -> list[tuple[str, LowRankLinear]]:
    """``root``'s adapter layers for a peft export: low-rank layers on ``nn.Linear`` only (peft's
    LoRA and VeRA layers); anything else is refused with a pointer to ``--to merged``."""
    layers = adapter_layers(root)
    if not layers or any(not isinstance(m, LowRankLinear) or m.conv for _, m in layers):
        raise ConfigError(f"method {method!r}: only low-rank layers on nn.Linear go to peft; use --to merged")
    return layers  # type: ignore[return-value]


def register_method(name: str):
    """Class decorator: register under ``name`` in METHODS (and remember the name)."""

    def add(cls: type[Method]) -> type[Method]:
        cls.registered_name = name  # type: ignore[attr-defined]
        return METHODS.register(name)(cls)

    return add


def build_method(cfg: DictConfig) -> Method:
    """The method named ``cfg.name``, with its config checked against its dataclass."""
    cls = METHODS.get(cfg.name)
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    values.pop("name")
    return cls(checked(cls.config_class, values, f"method {cfg.name}"))
