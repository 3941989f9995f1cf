"""LoRA+ (``schedule.loraplus_lr_ratio``) gives every parameter the LR and weight decay that peft's
``create_loraplus_optimizer`` gives it on the same model: B factors (found through the blocks protocol)
and 1-D tensors at ratio x lr, biases and LayerNorm weights not decayed, the rest at lr, decayed."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from peft.optimizers import create_loraplus_optimizer

from peftlab.config import compose_config
from peftlab.methods.base import build_method
from peftlab.train.optim import build_optimizer


def per_param(optimizer) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize("options", [{}, {"variant": "dora"}], ids=["lora", "dora"])
def test_loraplus_groups_equal_peft(tiny_model, options):
    model, _ = tiny_model
    method = build_method(OmegaConf.create({"name": "lora", "target_modules": "all-linear", **options}))
    method.setup(model)
    sched = compose_config(["schedule.loraplus_lr_ratio=16", "schedule.lr=1e-3"]).schedule
    ours = build_optimizer(method.param_groups(model), sched)
    theirs = create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16, loraplus_weight_decay=sched.weight_decay
    )
    mine, peft = per_param(ours), per_param(theirs)
    assert mine == peft
    assert {lr for lr, _ in mine.values()} == {1e-3, 16e-3}  # both LRs occur: the test can fail


def test_no_ratio_keeps_the_default_groups(tiny_model):
    model, _ = tiny_model
    method = build_method(OmegaConf.create({"name": "lora"}))
    method.setup(model)
    sched = compose_config([]).schedule
    optimizer = build_optimizer(method.param_groups(model), sched)
    assert {lr for lr, _ in per_param(optimizer).values()} == {sched.lr}
