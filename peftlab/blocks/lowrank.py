"""The low-rank path shared by LoRA, ELoRA and AFLoRA.

    y = base(x) + scale * b ⊙ B (d ⊙ A dropout(x))

LoRA uses no vectors (d = b = 1) and scale = alpha / r; ELoRA/AFLoRA use the vectors and scale 1.
Whether A and B are trainable parameters or frozen buffers is the method's choice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.errors import ConfigError


class LowRankLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a low-rank update; step 0 equals the base layer when B or b is 0."""

    # Names of the tensors that make up the adapter: what is trained and saved (never the base layer).
    adapter_tensor_names = ("lora_A", "lora_B", "vec_d", "vec_b")

    def __init__(
        self,
        base_layer: nn.Linear,
        rank: int,
        scale: float = 1.0,
        dropout: float = 0.0,
        vectors: bool = False,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.rank = rank
        self.scale = float(scale)
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base_layer.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, rank, **factory))
        self.vec_d = nn.Parameter(torch.ones(rank, **factory)) if vectors else None
        self.vec_b = nn.Parameter(torch.ones(base_layer.out_features, **factory)) if vectors else None
        # p=0 must not add a copy of the activations: use Identity, as peft does.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        h = F.linear(self.dropout(x), self.lora_A)
        if self.vec_d is not None:
            h = h * self.vec_d
        h = F.linear(h, self.lora_B)
        if self.vec_b is not None:
            h = h * self.vec_b
        return torch.add(y, h, alpha=self.scale)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scale · diag(b) B diag(d) A, computed in fp32."""
        a = self.lora_A.detach().float()
        b = self.lora_B.detach().float()
        if self.vec_d is not None:
            a = a * self.vec_d.detach().float()[:, None]
        if self.vec_b is not None:
            b = b * self.vec_b.detach().float()[:, None]
        return self.scale * (b @ a)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight, for inference at base-layer cost."""
        if not self.merged:
            weight = self.base_layer.weight
            weight.copy_((weight.float() + self.delta_weight()).to(weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self.base_layer.weight
            weight.copy_((weight.float() - self.delta_weight()).to(weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        vectors = self.vec_d is not None
        return f"rank={self.rank}, scale={self.scale:g}, vectors={vectors}, merged={self.merged}"


def check_rank(name: str, layer: nn.Linear, rank: int) -> None:
    """A rank must be at least 1 and at most min(in, out) of the layer it adapts."""
    limit = min(layer.in_features, layer.out_features)
    if not 1 <= rank <= limit:
        raise ConfigError(
            f"lora rank={rank} is not allowed for layer {name!r} "
            f"({layer.in_features} -> {layer.out_features}); allowed: 1..{limit}"
        )


def low_rank_layers(model: nn.Module) -> list[tuple[str, LowRankLinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LowRankLinear)]


def merge_all(model: nn.Module) -> None:
    for _, layer in low_rank_layers(model):
        layer.merge()


def unmerge_all(model: nn.Module) -> None:
    for _, layer in low_rank_layers(model):
        layer.unmerge()
