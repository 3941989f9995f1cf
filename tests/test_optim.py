"""The optimizer holds only trainable parameters; rebuilds keep the moments of what is still trained;
the head gets its own LR; the LR schedule is a linear warmup, then transformers' linear, cosine or constant
schedule, as a function of the step."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_config

from peftlab.blocks.params import default_param_groups
from peftlab.config import compose_config
from peftlab.errors import ConfigError
from peftlab.methods.base import build_method
from peftlab.run.experiment import run_experiment
from peftlab.train.optim import build_optimizer, lr_factor, rebuild_optimizer


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


COSINE_AT_40 = 0.5 * (1 + math.cos(math.pi / 3))  # a third of the decay (steps 10..100) done


@pytest.mark.parametrize(
    ("kind", "step", "factor"),
    [
        ("cosine", 5, 0.5),  # every schedule warms up linearly
        ("cosine", 10, 1.0),
        ("cosine", 40, COSINE_AT_40),
        ("cosine", 55, 0.5),
        ("cosine", 100, 0.0),
        ("constant", 5, 0.5),
        ("constant", 10, 1.0),
        ("constant", 100, 1.0),
    ],
)
def test_cosine_and_constant_schedules(kind, step, factor):
    assert lr_factor(step, total_steps=100, warmup_steps=10, kind=kind) == pytest.approx(factor)


def test_unknown_schedule_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="lr_scheduler='step'.*linear, cosine, constant"):
        lr_factor(1, 10, 0, kind="step")
    with pytest.raises(ConfigError, match="schedule.lr_scheduler"):
        from peftlab.config import check_config

        check_config(compose_config(["schedule.lr_scheduler=polynomial"]))


def test_a_run_trains_with_the_configured_schedule(tmp_path):
    """The LR logged at step k is the one step k used: lr x cosine((k - 1) / 4), no warmup."""
    overrides = ["schedule.lr_scheduler=cosine", "schedule.max_steps=4", "schedule.log_every_steps=1"]
    overrides += ["schedule.warmup_ratio=0", "schedule.lr=0.001", "measure.flops=false"]
    run_experiment(tiny_config(tmp_path, *overrides))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [row["lr"] for row in rows if "lr" in row]
    expected = [0.001 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert logged == pytest.approx(expected)


def test_the_lr_logged_at_a_rebuild_step_is_the_one_that_step_used(tmp_path):
    """AFLoRA rebuilds its optimizer after step 2 (new groups start at the base LR); the logged LR of that
    step is still the scheduled one: linear decay over 4 steps without warmup."""
    overrides = ["method=aflora", "method.delta_t=1", "method.t_initial=0.5", "method.t_final=0.5"]
    overrides += ["schedule.max_steps=4", "schedule.log_every_steps=1", "schedule.warmup_ratio=0"]
    overrides += ["schedule.lr=0.001", "measure.flops=false"]
    run_experiment(tiny_config(tmp_path, *overrides))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if "lr" in row]
    assert len({row["trainable_params"] for row in train}) > 1  # a rebuild happened within the run
    assert [row["lr"] for row in train] == pytest.approx([0.001 * (4 - k) / 4 for k in range(4)])
