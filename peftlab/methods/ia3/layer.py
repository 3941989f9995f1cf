"""The (IA)^3 layer: one learned vector ``ia3_l`` (ones at init) rescaling a frozen linear layer.

    output-scaled (keys, values):  y = l ⊙ (W x + b)        merge: W <- diag(l) W,  b <- l ⊙ b
    input-scaled (feedforward):    y = W (l ⊙ x) + b        merge: W <- W diag(l),  b unchanged

As peft's ``IA3Layer`` (peft/tuners/ia3/layer.py) computes it, dtype casts included. Only the core of
the protocol: a vector per layer has no units to prune.
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.blocks.protocol import AdapterLayer, copy_into
from peftlab.errors import ConfigError


class Ia3Linear(AdapterLayer):
    """A frozen ``nn.Linear`` whose output (or, ``feedforward``, input) is scaled by ``ia3_l``."""

    def __init__(self, base_layer: nn.Linear, feedforward: bool) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.feedforward = feedforward
        weight = base_layer.weight
        size = base_layer.in_features if feedforward else base_layer.out_features
        self.ia3_l = nn.Parameter(torch.ones(size, device=weight.device, dtype=weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        if self.feedforward:
            return self.base_layer((x.to(self.ia3_l.dtype) * self.ia3_l).to(x.dtype))
        y = self.base_layer(x)
        return (y * self.ia3_l).to(y.dtype)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {"ia3_l": self.ia3_l}

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        copy_into(self.adapter_tensors(), tensors, f"ia3 layer ({self.extra_repr()})")

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self._rescale(self.ia3_l.detach())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Divide the vector back out; a zero entry erased its row (column), so it cannot be undone."""
        if self.merged:
            if not self.ia3_l.all():
                raise ConfigError("an ia3 vector with a zero entry cannot be unmerged (the weight is lost)")
            self._rescale(1 / self.ia3_l.detach())
            self.merged = False

    def _rescale(self, factor: torch.Tensor) -> None:
        """Multiply the base weight's columns (feedforward) or rows and bias by ``factor``."""
        weight, bias = self.base_layer.weight, self.base_layer.bias
        if self.feedforward:
            weight.copy_((weight * factor[None, :]).to(weight.dtype))
            return
        weight.copy_((weight * factor[:, None]).to(weight.dtype))
        if bias is not None:
            bias.copy_((bias * factor).to(bias.dtype))

    def extra_repr(self) -> str:
        scaled = "input" if self.feedforward else "output"
        return f"scales the {scaled}, {self.ia3_l.numel()} entries"
