"""Baselines: full fine-tuning (``fft``) and training only the task head (``head``)."""

from __future__ import annotations

from torch import nn

from peftlab.blocks.params import freeze
from peftlab.methods.base import Method, register_method


@register_method("fft")
class FullFineTuning(Method):
    """Every parameter is trained."""

    def attach(self, model: nn.Module) -> None:
        model.requires_grad_(True)


@register_method("head")
class HeadOnly(Method):
    """Only the classification head (and its pooler, if any) is trained."""

    def attach(self, model: nn.Module) -> None:
        freeze(model)
        model.head.requires_grad_(True)
