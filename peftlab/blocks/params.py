"""Trainable-parameter accounting: derived from requires_grad, never from name lists."""

from __future__ import annotations

from torch import nn


def freeze(module: nn.Module) -> None:
    module.requires_grad_(False)


def train_head(model: nn.Module) -> None:
    """Train the task head (``model.head``) except the parts it keeps frozen: a frozen pooler
    (``model.head_pooler=frozen``) gets no gradient, no optimizer state and is not counted."""
    model.head.requires_grad_(True)
    for part in getattr(model.head, "frozen_parts", list)():
        freeze(part)


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
