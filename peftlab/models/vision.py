"""Image classifiers in the shape every method expects: ``backbone`` (adapted) + ``head`` (trained).

Backbones: EfficientNet-Lite0 in plain torch (pooled 1280 features), or a transformers vision model
(ViT/DeiT: the [CLS] token of the last hidden state, after its final layer norm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.models.heads import ModelOutput


@dataclass(frozen=True)
class ImageSpec:
    """What a model expects of its input images (the task may override mean and std)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class ImageClassifier(nn.Module):
    """Backbone + dropout + linear head. BatchNorm running statistics stay as pretrained (the norm layers
    are kept in eval mode while the rest trains): they are buffers, not parameters, so no method's
    adapter would save them, and a head-only run would otherwise adapt the backbone through them."""

    def __init__(self, backbone: nn.Module, num_features: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_labels = num_labels
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_labels))

    @property
    def config(self):
        return self.backbone.config

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.backbone(pixel_values)
        if isinstance(out, torch.Tensor):  # EfficientNet: already pooled
            return out
        return out.last_hidden_state[:, 0]  # transformers ViT/DeiT: [CLS]

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        logits = self.head(self.features(pixel_values))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ModelOutput(logits=logits, loss=loss)
