"""The low-rank path shared by LoRA, ELoRA and AFLoRA.

    y = base(x) + scale * b ⊙ B (d ⊙ A dropout(x))

LoRA uses no vectors (d = b = 1) and scale = alpha / r; ELoRA/AFLoRA use the vectors and scale 1.
Whether A and B are trainable parameters or frozen buffers is the method's choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.blocks.targeting import TargetSpec, match_targets, replace_module
from peftlab.errors import ConfigError

Wrapped = TypeVar("Wrapped", bound=nn.Module)


class LowRankLinear(nn.Module):
    """A frozen ``nn.Linear`` (or 1x1 ``nn.Conv2d``, a linear map over channels) plus a low-rank update;
    step 0 equals the base layer when B or b is 0."""

    def __init__(
        self,
        base_layer: nn.Linear | nn.Conv2d,
        rank: int,
        scale: float = 1.0,
        dropout: float = 0.0,
        vectors: bool = False,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.conv = isinstance(base_layer, nn.Conv2d)  # pointwise: A and B act on the channel dim
        self.rank = rank
        self.scale = float(scale)
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        self.vec_d = nn.Parameter(torch.ones(rank, **factory)) if vectors else None
        self.vec_b = nn.Parameter(torch.ones(self.out_features, **factory)) if vectors else None
        # p=0 must not add a copy of the activations: use Identity, as peft does.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fixed: FixedProjections | None = None
        self.merged = False
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def in_features(self) -> int:
        return self.base_layer.in_channels if self.conv else self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_channels if self.conv else self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        lora_a, lora_b = self.projections()
        if self.conv:  # channels first: the same maps as 1x1 convolutions (A takes the base's stride)
            h = F.conv2d(self.dropout(x), lora_a[:, :, None, None], stride=self.base_layer.stride)
            if self.vec_d is not None:
                h = h * self.vec_d[:, None, None]
            h = F.conv2d(h, lora_b[:, :, None, None])
            if self.vec_b is not None:
                h = h * self.vec_b[:, None, None]
            return torch.add(y, h, alpha=self.scale)
        h = F.linear(self.dropout(x), lora_a)
        if self.vec_d is not None:
            h = h * self.vec_d
        h = F.linear(h, lora_b)
        if self.vec_b is not None:
            h = h * self.vec_b
        return torch.add(y, h, alpha=self.scale)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scale · diag(b) B diag(d) A (out x in), computed in fp32."""
        lora_a, lora_b = self.projections()
        a = lora_a.detach().float()
        b = lora_b.detach().float()
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
            weight.copy_((weight.float() + self.delta_weight().view_as(weight)).to(weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self.base_layer.weight
            weight.copy_((weight.float() - self.delta_weight().view_as(weight)).to(weight.dtype))
            self.merged = False

    def use_fixed_projections(self, fixed: FixedProjections) -> None:
        """Use frozen projections sliced from ``fixed`` (possibly shared by many layers) instead of A, B."""
        if fixed.rank != self.rank:
            raise ValueError(f"fixed projections have rank {fixed.rank}, layer has {self.rank}")
        del self.lora_A, self.lora_B
        self.fixed = fixed

    def projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) as used in forward: own parameters, or slices of the fixed pair."""
        if self.fixed is not None:
            return self.fixed.A[:, : self.in_features], self.fixed.B[: self.out_features, :]
        return self.lora_A, self.lora_B

    def low_rank_pair(self) -> tuple[nn.Parameter, nn.Parameter]:
        """(A, B): (rank x in) and (out x rank)."""
        if self.fixed is not None:
            raise ValueError("a layer with fixed projections has no trainable (A, B) pair")
        return self.lora_A, self.lora_B

    def keep_ranks(self, keep: torch.Tensor) -> None:
        """Keep only ranks ``keep`` (rows of A, columns of B, entries of d); the scale is unchanged, as in
        Light-PEFT's code (alpha / the original rank)."""
        a, b = self.low_rank_pair()
        self.lora_A = nn.Parameter(a.detach().index_select(0, keep).clone(), requires_grad=a.requires_grad)
        self.lora_B = nn.Parameter(b.detach().index_select(1, keep).clone(), requires_grad=b.requires_grad)
        if self.vec_d is not None:
            d = self.vec_d
            self.vec_d = nn.Parameter(d.detach().index_select(0, keep).clone(), requires_grad=d.requires_grad)
        self.rank = int(keep.numel())

    def extra_repr(self) -> str:
        vectors = self.vec_d is not None
        return f"rank={self.rank}, scale={self.scale:g}, vectors={vectors}, merged={self.merged}"


class FixedProjections(nn.Module):
    """A frozen random pair A (rank x in), B (out x rank), regenerated from a seed (VeRA/ELoRA).

    Layers slice ``A[:, :in]`` and ``B[:out, :]``. The buffers are not saved (``persistent=False``):
    the seed is the checkpoint.
    """

    def __init__(self, rank: int, in_features: int, out_features: int, seed: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.rank, self.seed = rank, seed
        generator = torch.Generator().manual_seed(seed)
        a = torch.empty(rank, in_features, dtype=torch.float32)
        b = torch.empty(out_features, rank, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        nn.init.kaiming_uniform_(b, a=math.sqrt(5), generator=generator)
        self.register_buffer("A", a.to(dtype), persistent=False)
        self.register_buffer("B", b.to(dtype), persistent=False)


def check_rank(name: str, layer: nn.Linear | nn.Conv2d, rank: int, option: str = "lora rank") -> None:
    """A rank must be at least 1 and at most min(in, out) of the layer it adapts."""
    conv = isinstance(layer, nn.Conv2d)
    fan_in = layer.in_channels if conv else layer.in_features
    fan_out = layer.out_channels if conv else layer.out_features
    limit = min(fan_in, fan_out)
    if not 1 <= rank <= limit:
        raise ConfigError(
            f"{option}={rank} is not allowed for layer {name!r} ({fan_in} -> {fan_out}); allowed: 1..{limit}"
        )


def init_vectors(layer: LowRankLinear, d: float, b: float) -> None:
    """ELoRA/AFLoRA vector init: d (rank-sized) to ``d``, b (output-sized) to ``b`` (0: step 0 = base)."""
    with torch.no_grad():
        layer.vec_d.fill_(d)
        layer.vec_b.fill_(b)


def wrap_targets(
    model: nn.Module,
    targets: TargetSpec,
    make: Callable[[str, nn.Linear], Wrapped],
    layer_types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
) -> list[tuple[str, Wrapped]]:
    """Replace every target linear layer (or 1x1 convolution, unless ``layer_types`` leaves them out) of
    ``model`` by ``make(name, layer)`` (a low-rank layer, an adapter, ...); returns the new layers."""
    wrapped = []
    for name in match_targets(model, targets, layer_types):
        layer = make(name, model.get_submodule(name))
        replace_module(model, name, layer)
        wrapped.append((name, layer))
    return wrapped


def low_rank_layers(model: nn.Module) -> list[tuple[str, LowRankLinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LowRankLinear)]


def merge_all(model: nn.Module) -> None:
    for _, layer in low_rank_layers(model):
        layer.merge()


def unmerge_all(model: nn.Module) -> None:
    for _, layer in low_rank_layers(model):
        layer.unmerge()


def wrap_with_vectors(
    model: nn.Module, targets: TargetSpec, rank: int, d_init: float, b_init: float
) -> list[tuple[str, LowRankLinear]]:
    """The ELoRA/AFLoRA layer y = W0 x + b ⊙ B(d ⊙ A x) on every target, vectors trainable, scale 1.
    The caller decides what A and B are and whether they train."""
    layers = wrap_targets(model, targets, lambda name, layer: LowRankLinear(layer, rank, vectors=True))
    for _, layer in layers:
        init_vectors(layer, d_init, b_init)
        layer.vec_d.requires_grad_(True)
        layer.vec_b.requires_grad_(True)
    return layers


def low_rank_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of every low-rank layer except its base layer, plus the head: a full adapter."""
    state = {}
    for name, layer in low_rank_layers(model):
        for pname, param in layer.named_parameters(recurse=False):
            state[f"{name}.{pname}"] = param.detach()
    state.update({f"head.{k}": v.detach() for k, v in model.head.named_parameters()})
    return state
