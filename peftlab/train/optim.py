"""AdamW over the trainable parameters, a linear warmup/decay schedule, and optimizer rebuilds.

Only parameters with ``requires_grad`` enter the optimizer, so a frozen parameter has no optimizer
state and no weight decay. When a method changes the trainable set mid-run the optimizer is rebuilt
and keeps the state of the parameters that are still trained.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from peftlab.blocks.params import trainable_named_parameters


def default_param_groups(model: nn.Module, decayed: Collection[nn.Parameter] = ()) -> list[dict[str, Any]]:
    """Groups by part (head: own LR) and decay (no weight decay on biases and norms, i.e. 1-D tensors,
    except those in ``decayed``: e.g. ELoRA/AFLoRA's vectors, which the authors' code decays).

    A method may return other groups; a group may set ``lr``, ``lr_scale`` (times the schedule's LR) or
    ``weight_decay`` itself.
    """
    head_ids = {id(p) for p in model.head.parameters()}
    decayed_ids = {id(p) for p in decayed}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for _, param in trainable_named_parameters(model):
        key = ("head" if id(param) in head_ids else "body", param.ndim >= 2 or id(param) in decayed_ids)
        groups.setdefault(key, []).append(param)
    return [{"params": ps, "part": part, "decay": decay} for (part, decay), ps in groups.items()]


def build_optimizer(groups: list[dict[str, Any]], sched: DictConfig) -> torch.optim.AdamW:
    torch_groups = []
    for group in groups:
        default_lr = sched.head_lr if group.get("part") == "head" and sched.head_lr else sched.lr
        lr = group.get("lr", default_lr * group.get("lr_scale", 1.0))
        weight_decay = group.get("weight_decay", sched.weight_decay if group.get("decay", True) else 0.0)
        torch_groups.append(
            {
                "params": group["params"],
                "lr": lr,
                "base_lr": lr,
                "weight_decay": weight_decay,
                "name": f"{group.get('part', 'body')}/{'decay' if weight_decay else 'no_decay'}",
            }
        )
    return torch.optim.AdamW(torch_groups, betas=tuple(sched.adam_betas), eps=sched.adam_eps, foreach=True)


def rebuild_optimizer(
    old: torch.optim.Optimizer, groups: list[dict[str, Any]], sched: DictConfig
) -> torch.optim.AdamW:
    """A new optimizer over ``groups``; Adam moments carry over for every parameter still trained."""
    new = build_optimizer(groups, sched)
    for group in new.param_groups:
        for param in group["params"]:
            state = old.state.get(param)
            if state and state["exp_avg"].shape == param.shape:
                new.state[param] = state
    return new


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, decay: str = "linear", floor: float = 0.0
) -> float:
    """Linear warmup from 0, then linear decay to 0 (HF ``get_linear_schedule_with_warmup``), or cosine
    decay to ``floor`` (torch's ``CosineAnnealingLR`` with eta_min = floor x lr: SPSFT's vision runs)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if decay == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * progress)) / 2.0
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t)
    )
