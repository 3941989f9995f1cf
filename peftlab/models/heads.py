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

from peftlab.config import schemas
from peftlab.config.schemas import HEAD_POOLERS, POOLINGS
from peftlab.errors import ConfigError

# Activation of a fresh pooler (a backbone without one): tanh as BERT's pooler, gelu as DeBERTa's
# ContextPooler (transformers' DebertaV2ForSequenceClassification).
POOLER_ACTIVATIONS = dict(zip(schemas.POOLER_ACTIVATIONS, (nn.Tanh, nn.GELU), strict=True))


@dataclass
class ModelOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


def fresh_pooler(hidden_size: int, activation: str, init_std: float | None) -> nn.Sequential:
    """Dense + activation on [CLS], for a backbone without a pooler (DeBERTa). ``init_std``: the weight is
    drawn N(0, init_std) with a zero bias, as transformers initialises DeBERTa's ContextPooler (the
    DeBERTaV3 checkpoints hold no pooler weights, so the AFLoRA authors' frozen pooler is this draw)."""
    if activation not in POOLER_ACTIVATIONS:
        raise ConfigError(
            f"model.pooler_activation={activation!r} is not allowed; allowed: {', '.join(POOLER_ACTIVATIONS)}"
        )
    dense = nn.Linear(hidden_size, hidden_size)
    if init_std is not None:
        nn.init.normal_(dense.weight, std=init_std)
        nn.init.zeros_(dense.bias)
    return nn.Sequential(dense, POOLER_ACTIVATIONS[activation]())


class ClassificationHead(nn.Module):
    """Pooling -> (optional dense+activation pooler) -> dropout -> linear.

    ``pooler_trainable=False`` keeps the pooler frozen (``train_head`` leaves it out), as the AFLoRA
    authors' DeBERTa runs, where only the classifier is trained; it is still saved with the head."""

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        pooling: str,
        dropout: float,
        pooler: nn.Module | None,
        pooler_trainable: bool = True,
        pooler_activation: str = "tanh",
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        if pooling == "pooler" and pooler is None:
            pooler = fresh_pooler(hidden_size, pooler_activation, init_std)
        self.pooler = pooler if pooling == "pooler" else None
        self.pooler_trainable = pooler_trainable
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def frozen_parts(self) -> list[nn.Module]:
        """Parts of the head that stay frozen when the head is trained."""
        return [self.pooler] if self.pooler is not None and not self.pooler_trainable else []

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

    def __init__(
        self,
        backbone: nn.Module,
        num_labels: int,
        pooling: str = "mean",
        dropout: float = 0.1,
        head_pooler: str = "trainable",
        pooler_activation: str = "tanh",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model.pooling={pooling!r} is not allowed; allowed: {', '.join(POOLINGS)}")
        if head_pooler not in HEAD_POOLERS:
            raise ConfigError(
                f"model.head_pooler={head_pooler!r} is not allowed; allowed: {', '.join(HEAD_POOLERS)}"
            )
        # The backbone's pooler is part of the head when used (trained and saved with it), else dropped.
        backbone_pooler = getattr(backbone, "pooler", None)
        if backbone_pooler is not None:
            backbone.pooler = None
        self.backbone = backbone
        self.num_labels = num_labels
        config = backbone.config
        self.head = ClassificationHead(
            config.hidden_size,
            num_labels,
            pooling,
            dropout,
            backbone_pooler,
            pooler_trainable=head_pooler == "trainable",
            pooler_activation=pooler_activation,
            init_std=getattr(config, "initializer_range", None),
        )

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
