"""Sequence-classification model: a pretrained backbone plus a pooling head that is always trained.

The head is a separate submodule (``model.head``) so every method trains and saves it the same way,
and so the pooling is a config choice: all-MiniLM-L6-v2 was trained with mean pooling and learns
badly through its [CLS]+pooler path (measured in shared/MODELS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.errors import ConfigError

POOLINGS = ("mean", "cls", "pooler")


@dataclass
class ModelOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class ClassificationHead(nn.Module):
    """Pooling -> (optional dense+tanh pooler) -> dropout -> linear."""

    def __init__(
        self, hidden_size: int, num_labels: int, pooling: str, dropout: float, pooler: nn.Module | None
    ) -> None:
        super().__init__()
        self.pooling = pooling
        if pooling == "pooler" and pooler is None:
            pooler = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh())
        self.pooler = pooler if pooling == "pooler" else None
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        elif isinstance(self.pooler, nn.Sequential):
            pooled = self.pooler(hidden[:, 0])
        elif self.pooler is not None:  # the backbone's own pooler (BertPooler) reads [:, 0] itself
            pooled = self.pooler(hidden)
        else:
            pooled = hidden[:, 0]
        return self.classifier(self.dropout(pooled))


class SequenceClassifier(nn.Module):
    """Backbone (``AutoModel``) + ``ClassificationHead``; regression when ``num_labels == 1``."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model.pooling={pooling!r} is not allowed; allowed: {', '.join(POOLINGS)}")
        # The backbone's pooler is part of the head when used (trained and saved with it), else dropped.
        backbone_pooler = getattr(backbone, "pooler", None)
        if backbone_pooler is not None:
            backbone.pooler = None
        self.backbone = backbone
        self.num_labels = num_labels
        hidden = backbone.config.hidden_size
        self.head = ClassificationHead(hidden, num_labels, pooling, dropout, backbone_pooler)

    @property
    def config(self):
        return self.backbone.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        **inputs: torch.Tensor,
    ) -> ModelOutput:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        logits = self.head(hidden, attention_mask)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
        return ModelOutput(logits=logits, loss=loss)
