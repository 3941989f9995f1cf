"""DoRA (Liu et al. 2024): weight-decomposed low-rank adaptation, ``method=lora method.variant=dora``.

    W' = m ⊙ (W + s·BA) / ||W + s·BA||_row,   m (one per output) trained, initialised to ||W||_row

As peft's ``use_dora=True`` computes it: the norm is recomputed every forward from the current BA and
treated as a constant (detached; DoRA Sec. 4.3), and the output is
base(x) + (m/n - 1) ⊙ W x + (m/n) ⊙ s·BA x, so step 0 (B = 0) equals the base layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.blocks.lowrank import LowRankLinear
from peftlab.blocks.lowrank_variant import LowRankVariant
from peftlab.blocks.protocol import kept
from peftlab.errors import ConfigError
from peftlab.registry import LORA_VARIANTS


@LORA_VARIANTS.register("dora")
class Dora(LowRankVariant):
    """The magnitude vector and DoRA's forward, merge and slicing rules."""

    def __init__(self, layer: LowRankLinear) -> None:
        super().__init__(layer)
        if layer.conv or layer.vec_d is not None:
            raise ConfigError("variant=dora adapts plain LoRA on nn.Linear layers; allowed elsewhere: none")
        self.magnitude = nn.Parameter(row_norm(layer.base_layer.weight, layer.delta_weight()))
        self.merge_norm: torch.Tensor | None = None  # the norm the merge divided by (unmerge needs it)

    def output(self, layer: LowRankLinear, x: torch.Tensor, y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """peft's DoRA forward, op for op (the same bits): y + ((m/n - 1) W x + (m/n) h s)."""
        factor = self.magnitude / forward_norm(layer).detach()
        base = layer.base_layer
        if isinstance(layer.dropout, nn.Identity) or not layer.training:
            wx = y if base.bias is None else y - base.bias  # W x without a second matmul
        else:
            wx = F.linear(x, base.weight)  # W applied to the dropped-out input, as peft does
        return y + ((factor - 1) * wx + factor * h * layer.scale)

    def merged_weight(self, layer: LowRankLinear, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        self.merge_norm = (weight + delta).norm(dim=1)
        return (self.magnitude.detach().float() / self.merge_norm)[:, None] * (weight + delta)

    def unmerged_weight(
        self, layer: LowRankLinear, weight: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        assert self.merge_norm is not None
        return weight / (self.magnitude.detach().float() / self.merge_norm)[:, None] - delta

    def keep_outputs(self, layer: LowRankLinear, index: torch.Tensor) -> None:
        self.magnitude = kept(self.magnitude, 0, index)

    @torch.no_grad()
    def keep_inputs(self, layer: LowRankLinear, index: torch.Tensor) -> None:
        """Removed input columns no longer count in the norm: m is rescaled by n_kept / n_all, so the
        pruned layer computes what the layer with those inputs masked to 0 computed."""
        weight, delta = layer.base_layer.weight, layer.delta_weight()
        index = index.to(weight.device)
        ratio = row_norm(weight.index_select(1, index), delta.index_select(1, index)) / row_norm(
            weight, delta
        )
        magnitude = self.magnitude
        self.magnitude = nn.Parameter(magnitude.detach() * ratio.to(magnitude.dtype), magnitude.requires_grad)


def row_norm(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """||W + ΔW|| of every output row, in the weight's dtype (``delta`` already holds the scale)."""
    return torch.linalg.norm(weight + delta.to(weight.dtype), dim=1)


def forward_norm(layer: LowRankLinear) -> torch.Tensor:
    """||W + s·BA|| of every row as peft's forward computes it: BA as (A^T B^T)^T (peft applies lora_B
    to lora_A of an identity matrix, which is A^T exactly), so the same matmul and the same bits."""
    a, b = (t.detach() for t in layer.low_rank_pair())
    weight = layer.base_layer.weight
    lora_weight = F.linear(a.t().contiguous(), b).t().to(weight.dtype)
    return torch.linalg.norm(weight + layer.scale * lora_weight, dim=1).to(weight.dtype)
