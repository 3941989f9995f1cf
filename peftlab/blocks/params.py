"""Trainable-parameter accounting: derived from requires_grad, never from name lists."""

from __future__ import annotations

from torch import nn


def freeze(module: nn.Module) -> None:
    module.requires_grad_(False)


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
