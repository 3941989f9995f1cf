"""LoRA (Hu et al. 2021): y = W0 x + (alpha / r) · B A dropout(x), with A kaiming, B zero (peft's init).

Options of the one low-rank layer (``blocks/lowrank.py``): ``init=pissa`` (PiSSA: A, B from the top-r
singular vectors, the base keeps the residual) and ``variant=<name>`` (a registered LoRA variant, e.g.
``dora``; ``peftlab/methods/lora/``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftlab.blocks.lowrank import LowRankLinear, check_rank, wrap_targets
from peftlab.blocks.params import freeze, train_head
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, MethodConfig, peft_linear_layers, register_method
from peftlab.methods.lora.peft_form import lora_peft_form
from peftlab.registry import LORA_VARIANTS

LORA_INITS = ("lora", "pissa", "olora")
REFUSED_INITS = {
    "loftq": "without quantisation W - Q(W) = 0, so LoftQ's A = B = 0 (allowed: lora, pissa, olora)",
    "eva": "EVA's data-driven SVD of the layer inputs is not implemented (allowed: lora, pissa, olora)",
}


@dataclass
class LoraConfig(MethodConfig):
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    rslora: bool = False  # scale alpha / sqrt(r) instead of alpha / r
    # peft-style: a list of names/suffixes, or one regex string that must fullmatch the module name
    target_modules: list[str] | str = field(default_factory=lambda: ["query", "value"])
    # lora: A kaiming, B zero | pissa: principal singular vectors | olora: QR of W (both: residual base)
    init: str = "lora"
    variant: str | None = None  # null: plain LoRA | a variant in peftlab/methods/lora, e.g. dora

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"method.dropout={self.dropout} is not allowed; allowed: 0 <= dropout < 1")
        if not (isinstance(self.alpha, int | float) and 0 < self.alpha < math.inf):
            raise ConfigError(
                f"method.alpha={self.alpha} is not allowed; allowed: a finite number > 0 (0 leaves the "
                "adapter out of the output, a negative alpha subtracts its update)"
            )
        if self.rank < 1:
            raise ConfigError(f"method.rank={self.rank} is not allowed; allowed: an integer >= 1")
        if self.init in REFUSED_INITS:
            raise ConfigError(f"method.init={self.init} is refused: {REFUSED_INITS[self.init]}")
        if self.init not in LORA_INITS:
            raise ConfigError(f"method.init={self.init!r} is not allowed; allowed: {', '.join(LORA_INITS)}")
        if self.variant is not None:
            LORA_VARIANTS.get(self.variant)  # an unknown name fails here, listing the variants

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


@register_method("lora")
class Lora(Method):
    config_class = LoraConfig
    config: LoraConfig

    def attach(self, model: nn.Module) -> None:
        freeze(model)
        cfg = self.config

        def make(name: str, layer: nn.Linear) -> LowRankLinear:  # a new layer's tensors train
            check_rank(name, layer, cfg.rank)
            return LowRankLinear(layer, cfg.rank, cfg.scale, cfg.dropout, init=cfg.init, variant=cfg.variant)

        wrap_targets(model.backbone, cfg.target_modules, make)
        train_head(model)

    def peft_export(self, root: nn.Module) -> tuple[Any, dict[str, torch.Tensor]]:
        """peft's LoRA: rsLoRA and DoRA as its options, PiSSA as a rank-2r LoRA on the original base."""
        cfg = self.config
        return lora_peft_form(peft_linear_layers(root, self.name), cfg.dropout, cfg.rslora, cfg.variant)
