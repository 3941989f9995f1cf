"""Activation checkpointing (``schedule.activation_checkpointing=true``): each transformer block keeps
only its input during the forward and recomputes its activations in the backward.

Non-reentrant (``torch.utils.checkpoint`` with ``use_reentrant=False``, through transformers'
``activation_checkpointing_enable``): gradients reach parameters whose block input needs no gradient (the
frozen embeddings of every PEFT method), custom autograd functions (SPSFT's hand-written backward) save
through it, and forward hooks may see the recomputed forward too (Light-PEFT's module scores add sums and
token counts, so a forward counted twice leaves their ratio unchanged).
"""

from __future__ import annotations

import logging

from torch import nn
from transformers import PreTrainedModel

from peftlab.errors import ConfigError

log = logging.getLogger(__name__)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Turn on non-reentrant checkpointing of every block of ``model.backbone`` (a transformers model)."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, PreTrainedModel) or not backbone.supports_gradient_checkpointing:
        name = type(backbone).__name__
        raise ConfigError(
            f"schedule.activation_checkpointing=true: the backbone {name} is not a transformers model that "
            "supports gradient checkpointing; allowed: false for this model"
        )
    backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    log.info("activation checkpointing on (%s, non-reentrant)", type(backbone).__name__)
