"""AdamW over the trainable parameters, the LR schedule (transformers' linear / cosine / constant, after a
linear warmup), and optimizer rebuilds.

Only parameters with ``requires_grad`` enter the optimizer, so a frozen parameter has no optimizer
state and no weight decay. When a method changes the trainable set mid-run the optimizer is rebuilt
and keeps the state of the parameters that are still trained.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from omegaconf import DictConfig

from peftlab.errors import ConfigError


def loraplus_groups(groups: list[dict[str, Any]], ratio: float) -> list[dict[str, Any]]:
    """LoRA+ (``schedule.loraplus_lr_ratio``): each group split by the roles ``default_param_groups``
    recorded (``blocks.params.loraplus_roles``): fast tensors at ratio x lr, decay as peft decides."""
    split = []
    for group in groups:
        roles = group.get("loraplus")
        if roles is None:
            split.append(group)
            continue
        parts: dict[tuple[bool, bool], list[Any]] = {}
        for param in group["params"]:
            parts.setdefault(roles[id(param)], []).append(param)
        for (fast, decay), params in parts.items():
            scale = group.get("lr_scale", 1.0) * (ratio if fast else 1.0)
            split.append({**group, "params": params, "decay": decay, "lr_scale": scale})
    return split


def build_optimizer(groups: list[dict[str, Any]], sched: DictConfig) -> torch.optim.AdamW:
    torch_groups = []
    if getattr(sched, "loraplus_lr_ratio", None):
        groups = loraplus_groups(groups, sched.loraplus_lr_ratio)
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
    kernel = {"fused": True} if fused_supported(groups) else {"foreach": True}
    return torch.optim.AdamW(torch_groups, betas=tuple(sched.adam_betas), eps=sched.adam_eps, **kernel)


def fused_supported(groups: list[dict[str, Any]]) -> bool:
    """Whether torch's fused AdamW takes every parameter (floating, on a device with the fused kernel):
    one kernel per step and no host sync for the step counts (the for-each kernel reads each count back
    to the host for the bias correction). The updates equal the for-each kernel's within fp32 rounding."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    params = [p for group in groups for p in group["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in devices for p in params)


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


# schedule.lr_scheduler -> the name ``transformers.get_scheduler`` knows (every one warms up linearly first)
LR_SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, kind: str = "linear", floor: float = 0.0
) -> float:
    """The LR multiplier at ``step``: a linear warmup from 0, then ``kind`` (linear decay to 0, cosine
    decay to ``floor``, or constant), as ``transformers.get_scheduler`` computes it. A cosine with a floor
    is torch's ``CosineAnnealingLR`` with eta_min = floor x lr (SPSFT's vision runs). A function of the
    step, not a scheduler object: optimizer rebuilds and resumed runs need no scheduler state to match."""
    warmup_steps = warmup_used(warmup_steps, total_steps)
    return _schedule(kind, total_steps, warmup_steps, floor)(min(step, total_steps))


def warmup_used(warmup_steps: int, total_steps: int) -> int:
    """The warmup ends before the last step: a warmup over every step (schedule.max_steps=1, or
    warmup_ratio=1.0) would never reach the peak LR, and a 1-step run would train at LR 0."""
    return min(warmup_steps, max(total_steps - 1, 0))


@lru_cache(maxsize=32)
def _schedule(kind: str, total_steps: int, warmup_steps: int, floor: float) -> Callable[[int], float]:
    """transformers' schedule as a function of the step: the lambda of the LambdaLR it builds."""
    from transformers import get_scheduler

    if kind not in LR_SCHEDULERS:
        raise ConfigError(
            f"schedule.lr_scheduler={kind!r} is not allowed; allowed: {', '.join(LR_SCHEDULERS)}"
        )
    name, extra = LR_SCHEDULERS[kind], {}
    if kind == "cosine" and floor > 0:
        name, extra = "cosine_with_min_lr", {"min_lr_rate": floor}
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = get_scheduler(
        name,
        probe,
        num_warmup_steps=warmup_steps,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=extra,
    )
    return scheduler.lr_lambdas[0]


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
