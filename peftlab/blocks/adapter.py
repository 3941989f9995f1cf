"""Houlsby-style bottleneck adapter on a sublayer's output projection: h + s * up(act(down(h))).

Wrapping the projection that writes a sublayer back to the residual stream (attention output, FFN
output) puts the adapter where Houlsby et al. place it: after the sublayer, before its residual add and
LayerNorm. ``up`` starts at zero, so step 0 equals the base model (``init=normal``: down and up drawn
from N(0, 0.02), as the Light-PEFT authors' adapter, which also has no biases: ``bias=false``). The
bottleneck's hidden units are the adapter's prunable units (Light-PEFT prunes them as it prunes ranks).
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.blocks.protocol import LowRankLayer, copy_into, sliced_linear
from peftlab.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
ADAPTER_INITS = ("houlsby", "normal")  # houlsby: down kaiming, up zero | normal: both N(0, 0.02) (Light-PEFT)


class BottleneckAdapter(LowRankLayer):
    """A frozen ``nn.Linear`` whose output h is adapted: h + scale * up(act(down(h)))."""

    def __init__(
        self,
        base_layer: nn.Linear,
        bottleneck: int,
        activation: str = "relu",
        scale: float = 1.0,
        dropout: float = 0.0,
        bias: bool = True,
        init: str = "houlsby",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"adapter activation={activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        if init not in ADAPTER_INITS:
            raise ConfigError(f"adapter init={init!r}; allowed: {', '.join(ADAPTER_INITS)}")
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        width = base_layer.out_features
        self.base_layer = base_layer
        self.scale = float(scale)
        self.adapter_down = nn.Linear(width, bottleneck, bias=bias, **factory)  # torch's kaiming-uniform init
        self.adapter_up = nn.Linear(bottleneck, width, bias=bias, **factory)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # on the adapter's input h
        if init == "normal":  # the Light-PEFT authors' adapter: step 0 is not quite the base model
            for layer in (self.adapter_down, self.adapter_up):
                nn.init.normal_(layer.weight, std=0.02)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        else:
            nn.init.zeros_(self.adapter_up.weight)
            if self.adapter_up.bias is not None:
                nn.init.zeros_(self.adapter_up.bias)

    @property
    def units(self) -> int:
        """The bottleneck width: its hidden units are what Light-PEFT prunes."""
        return self.adapter_down.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        return torch.add(h, self.adapter_up(self.act(self.adapter_down(self.dropout(h)))), alpha=self.scale)

    def low_rank_pair(self) -> tuple[nn.Parameter, nn.Parameter]:
        """(down, up) weights: (units x d) and (d x units), shaped like LoRA's (A, B)."""
        return self.adapter_down.weight, self.adapter_up.weight

    # -- AdapterLayer and PrunableAdapterLayer (peftlab/blocks/protocol.py) ---------------------------
    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.named_parameters() if not n.startswith("base_layer.")}

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        copy_into(self.adapter_tensors(), tensors, f"adapter ({self.extra_repr()})")

    def merge(self) -> None:
        raise ConfigError(
            "a bottleneck adapter applies a nonlinearity to the layer's output and cannot be merged into "
            "its weight; evaluate or export it unmerged"
        )

    def unmerge(self) -> None:
        """Never merged: nothing to undo."""

    def keep_units(self, keep: torch.Tensor) -> None:
        """Keep only bottleneck units ``keep`` (rows of down, columns of up)."""
        down, up = self.adapter_down, self.adapter_up
        self.adapter_down = sliced_linear(down, keep, None)
        self.adapter_up = sliced_linear(up, None, keep)

    def keep_outputs(self, keep: torch.Tensor) -> None:
        raise ConfigError("cannot remove output rows of an adapted layer: the adapter reads all of them")

    def keep_inputs(self, keep: torch.Tensor) -> None:
        """Keep only input columns ``keep`` of the base layer; the adapter reads its outputs, unchanged."""
        self.base_layer = sliced_linear(self.base_layer, None, keep)

    def removed(self) -> nn.Module:
        return self.base_layer

    def extra_repr(self) -> str:
        return f"bottleneck={self.units}, scale={self.scale}"
