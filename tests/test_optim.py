"""The optimizer holds only trainable parameters; rebuilds keep the moments of what is still trained;
the head gets its own LR; the LR schedule is linear warmup then linear decay."""

from __future__ import annotations

import pytest
import torch

from peftlab.config import compose_config
from peftlab.methods.base import build_method
from peftlab.train.optim import build_optimizer, default_param_groups, lr_factor, rebuild_optimizer


def test_frozen_parameters_have_no_optimizer_state_or_decay(tiny_model, batch):
    model, _ = tiny_model
    cfg = compose_config(["schedule.head_lr=0.05", "schedule.weight_decay=0.1"])
    build_method(cfg.method).setup(model)
    opt = build_optimizer(default_param_groups(model), cfg.schedule)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    model.train()
    model(**batch).loss.backward()
    opt.step()
    assert {id(p) for p in opt.state} == in_opt
    head = {id(p) for p in model.head.parameters()}
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        assert group["lr"] == (0.05 if ids <= head else cfg.schedule.lr)
        assert (group["weight_decay"] == 0.1) == all(p.ndim >= 2 for p in group["params"])


def test_rebuild_drops_frozen_and_keeps_moments(tiny_model, batch):
    model, _ = tiny_model
    cfg = compose_config([])
    build_method(cfg.method).setup(model)
    opt = build_optimizer(default_param_groups(model), cfg.schedule)
    model.train()
    model(**batch).loss.backward()
    opt.step()
    layer = model.backbone.encoder.layer[0].attention.self.query
    layer.lora_A.requires_grad_(False)
    kept = layer.lora_B
    moment = opt.state[kept]["exp_avg"].clone()
    new = rebuild_optimizer(opt, default_param_groups(model), cfg.schedule)
    assert layer.lora_A not in new.state
    assert all(p is not layer.lora_A for g in new.param_groups for p in g["params"])
    assert torch.equal(new.state[kept]["exp_avg"], moment)


@pytest.mark.parametrize(("step", "factor"), [(0, 0.0), (5, 0.5), (10, 1.0), (55, 0.5), (100, 0.0)])
def test_linear_warmup_then_decay(step, factor):
    assert lr_factor(step, total_steps=100, warmup_steps=10) == pytest.approx(factor)
