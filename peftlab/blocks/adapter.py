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

    def __init__(self, base_layer: nn.Linear, bottleneck: int, activation: str = "relu", scale: float = 1.0):
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
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    @property
    def rank(self) -> int:
        return self.adapter_down.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        return torch.add(h, self.adapter_up(self.act(self.adapter_down(h))), alpha=self.scale)

    def extra_repr(self) -> str:
        return f"bottleneck={self.rank}, scale={self.scale}"
