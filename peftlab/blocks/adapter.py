"""Houlsby-style bottleneck adapter on a sublayer's output projection: h + s * up(act(down(h))).

Wrapping the projection that writes a sublayer back to the residual stream (attention output, FFN
output) puts the adapter where Houlsby et al. place it: after the sublayer, before its residual add and
LayerNorm. ``up`` starts at zero, so step 0 equals the base model. The bottleneck width plays the
role of a rank (Light-PEFT prunes it).
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class BottleneckAdapter(nn.Module):
    """A frozen ``nn.Linear`` whose output h is adapted: h + scale * up(act(down(h)))."""

    def __init__(
        self,
        base_layer: nn.Linear,
        bottleneck: int,
        activation: str = "relu",
        scale: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"adapter activation={activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        width = base_layer.out_features
        self.base_layer = base_layer
        self.scale = float(scale)
        self.adapter_down = nn.Linear(width, bottleneck, **factory)  # torch's default (kaiming-uniform) init
        self.adapter_up = nn.Linear(bottleneck, width, **factory)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # on the adapter's input h
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    @property
    def rank(self) -> int:
        return self.adapter_down.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        return torch.add(h, self.adapter_up(self.act(self.adapter_down(self.dropout(h)))), alpha=self.scale)

    def low_rank_pair(self) -> tuple[nn.Parameter, nn.Parameter]:
        """(down, up) weights: (rank x d) and (d x rank), shaped like LoRA's (A, B)."""
        return self.adapter_down.weight, self.adapter_up.weight

    def keep_ranks(self, keep: torch.Tensor) -> None:
        """Keep only bottleneck units ``keep`` (rows of down, columns of up)."""
        down, up = self.adapter_down, self.adapter_up
        self.adapter_down = _linear_from(down.weight.index_select(0, keep), down.bias.index_select(0, keep))
        self.adapter_up = _linear_from(up.weight.index_select(1, keep), up.bias)

    def extra_repr(self) -> str:
        return f"bottleneck={self.rank}, scale={self.scale}"


def _linear_from(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    layer.requires_grad_(weight.requires_grad)
    return layer
