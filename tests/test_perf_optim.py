"""The fused AdamW the loop uses where torch has the kernel makes the for-each kernel's updates, within
fp32 rounding, over a decaying LR and two weight-decay groups."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from peftlab.train.optim import build_optimizer, set_lr

SCHED = OmegaConf.create(
    {"lr": 5e-4, "head_lr": None, "weight_decay": 0.01, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8}
)


def trained(fused: bool, steps: int = 40) -> list[torch.Tensor]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in ((8, 48), (48, 8), (2, 48), (2,))]
    initial = [p.detach().clone() for p in params]
    groups = [{"params": params[:3]}, {"params": params[3:], "decay": False, "part": "head"}]
    optimizer = build_optimizer(groups, SCHED)
    if not fused:  # the same groups (lr, base_lr, weight decay) without the fused flag
        kernel_free = [
            {k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in optimizer.param_groups
        ]
        optimizer = torch.optim.AdamW(kernel_free, foreach=True)
    assert [bool(g["fused"]) for g in optimizer.param_groups] == [fused, fused]
    grads = torch.Generator().manual_seed(1)
    for step in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=grads)
        set_lr(optimizer, 1 - step / steps)
        optimizer.step()
    moved = [not torch.equal(p, start) for p, start in zip(params, initial, strict=True)]
    assert all(moved)
    return [p.detach() for p in params]


def test_fused_adamw_makes_the_foreach_updates_within_fp32_rounding():
    for fused, foreach in zip(trained(True), trained(False), strict=True):
        torch.testing.assert_close(fused, foreach, rtol=1e-6, atol=1e-6)
