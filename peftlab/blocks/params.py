"""Trainable-parameter accounting: derived from requires_grad, never from name lists."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
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


def default_param_groups(model: nn.Module, decayed: Collection[nn.Parameter] = ()) -> list[dict[str, Any]]:
    """Optimizer groups by part (head: own LR) and decay (no weight decay on biases and norms, i.e. 1-D
    tensors, except those in ``decayed``: e.g. ELoRA/AFLoRA's vectors, which the authors' code decays).

    A method may return other groups; a group may set ``lr``, ``lr_scale`` (times the schedule's LR) or
    ``weight_decay`` itself (``peftlab.train.optim.build_optimizer`` reads them).
    """
    head_ids = {id(p) for p in model.head.parameters()}
    decayed_ids = {id(p) for p in decayed}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for _, param in trainable_named_parameters(model):
        key = ("head" if id(param) in head_ids else "body", param.ndim >= 2 or id(param) in decayed_ids)
        groups.setdefault(key, []).append(param)
    roles = loraplus_roles(model)
    return [
        {"params": ps, "part": part, "decay": decay, "loraplus": roles}
        for (part, decay), ps in groups.items()
    ]


def loraplus_roles(model: nn.Module) -> dict[int, tuple[bool, bool]]:
    """id(param) -> (fast, decayed) as peft's ``create_loraplus_optimizer`` decides: the B factor of every
    low-rank pair (``LowRankLayer.low_rank_pair``) and every 1-D tensor train at ratio x lr; a 1-D tensor
    named ``bias`` or inside a LayerNorm is not decayed, every other tensor is. Our low-rank layers wrap
    no embedding, so peft's embedding group has nothing here."""
    from peftlab.blocks.protocol import LowRankLayer, adapter_layers

    up = set()
    for _, layer in adapter_layers(model):
        if isinstance(layer, LowRankLayer):
            try:
                up.add(id(layer.low_rank_pair()[1]))
            except ValueError:  # frozen fixed projections: no trained pair
                continue
    in_norm = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    return {
        id(p): (id(p) in up or p.ndim == 1, p.ndim >= 2 or not ("bias" in name or id(p) in in_norm))
        for name, p in trainable_named_parameters(model)
    }


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def copied_to(value: Any, device: torch.device | str) -> Any:
    """``value`` (tensors, possibly in dicts, lists and tuples) with every tensor copied onto ``device``:
    a checkpoint's method state is loaded onto the CPU, and its tensors must neither stay there (a step
    adds device scores to them) nor share storage with the loaded payload."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device, copy=True)
    if isinstance(value, dict):
        return {k: copied_to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(copied_to(v, device) for v in value)
    return value
