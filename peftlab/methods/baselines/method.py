"""Baselines: full fine-tuning (``fft``) and training only the task head (``head``)."""

from __future__ import annotations

from torch import nn

from peftlab.blocks.params import freeze, train_head
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, register_method


@register_method("fft")
class FullFineTuning(Method):
    """Every parameter is trained (but a frozen pooler, ``model.head_pooler=frozen``)."""

    trains_backbone_weights = True
    merged_only_reason = "it trains every base weight: the merged export is the fine-tuned model itself"

    def attach(self, model: nn.Module) -> None:
        model.requires_grad_(True)
        if hasattr(model, "head"):
            train_head(model)


@register_method("head")
class HeadOnly(Method):
    """Only the classification head (and its pooler, if any) is trained."""

    backward_through_backbone = False
    merged_only_reason = (
        "it trains no base weight: the merged export is the base model with the head beside it"
    )

    def attach(self, model: nn.Module) -> None:
        if not any(True for _ in model.head.parameters()):
            raise ConfigError(
                "method head trains only the task head, and this model has none: language-model tasks "
                "reuse the pretrained output projection; use fft or a PEFT method"
            )
        freeze(model)
        train_head(model)
