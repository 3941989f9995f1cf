"""``method=peft`` beyond two steps: AdaLoRA's budget moves ranks, prompt tuners pool the real tokens,
peft's refusals come before a run folder, the adapter reloads and exports, and a run resumes after a kill."""

from __future__ import annotations

import torch
from conftest import tiny_config

from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir
from peftlab.train.summary import method_report

# AdaLoRA's schedule inside 8 steps: 2 warm-up, 3 pruning steps budgeted every step, 3 final steps
ADALORA_SHORT = [
    "method=peft_adalora",
    "schedule.max_steps=8",
    "method.config.tinit=2",
    "method.config.tfinal=3",
    "method.config.deltaT=1",
]


def test_adalora_budget_moves_the_ranks(tmp_path):
    trainer = build_trainer(tiny_config(tmp_path, *ADALORA_SHORT), RunDir(tmp_path))
    start = trainer.method.allocation.ranks()
    assert set(start.values()) == {12}  # init_r everywhere
    trainer.fit()
    end = method_report(trainer)["ranks"]
    assert end.keys() == start.keys() and end != start
    assert sum(end.values()) < sum(start.values())  # pruned towards target_r 8 on average
    pattern = trainer.method.wrapped.peft_config["default"].rank_pattern
    assert pattern and any(not all(kept) for kept in pattern.values())  # peft's own record agrees
