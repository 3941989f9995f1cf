"""What a LoRA variant (DoRA; registered in ``LORA_VARIANTS``) overrides; the base class is plain LoRA."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from peftlab.blocks.lowrank import LowRankLinear


class LowRankVariant(nn.Module):
    """A LoRA variant (peft's ``LoraVariant``): tensors of its own (registered on this module, so they are
    saved with the layer) and hooks into forward, merge and slicing. The base class is plain LoRA."""

    def __init__(self, layer: LowRankLinear) -> None:
        super().__init__()
        del layer

    def output(self, layer: LowRankLinear, x: torch.Tensor, y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The layer's output from the (dropped-out) input ``x``, base output ``y`` and update ``h`` =
        b ⊙ B(d ⊙ A x), not yet scaled."""
        return y + layer.scaled(h)

    def merged_weight(self, layer: LowRankLinear, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The base weight with the update folded in (fp32 in, fp32 out)."""
        return weight + delta

    def unmerged_weight(
        self, layer: LowRankLinear, weight: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        return weight - delta

    def keep_outputs(self, layer: LowRankLinear, index: torch.Tensor) -> None:
        """Called before the layer keeps only output rows ``index``."""

    def keep_inputs(self, layer: LowRankLinear, index: torch.Tensor) -> None:
        """Called before the layer keeps only input columns ``index``."""


PLAIN = LowRankVariant(None)  # type: ignore[arg-type]  # plain LoRA's hooks (never a submodule)
