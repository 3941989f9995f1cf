"""The training step reads nothing back to the host beyond what the model's own forward does: host syncs
(``aten::_local_scalar_dense``: ``.item()``, ``float()``, ``int()`` of a tensor) stall a GPU step, so
the loop keeps them to logging points. Counted over steps 2-4 of a LoRA run on the tiny BERT."""

from __future__ import annotations

import collections

import pytest
import torch
from conftest import tiny_config
from torch.utils._python_dispatch import TorchDispatchMode

from peftlab.reporting.gpu_check import method_names
from peftlab.reporting.syncs import count_method
from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir

SYNC = torch.ops.aten._local_scalar_dense.default


class CountOps(TorchDispatchMode):
    """Counts every aten op that runs under it."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func] += 1
        return func(*args, **(kwargs or {}))


def syncs(fn) -> int:
    with CountOps() as mode:
        fn()
    return mode.counts[SYNC]


@pytest.mark.parametrize("overrides", [[], ["schedule.max_grad_norm=1.0"]])
def test_a_lora_step_adds_no_host_sync_to_the_models_own(tmp_path, overrides):
    steps = ["task.max_train_samples=64", "schedule.max_steps=5"]
    cfg = tiny_config(tmp_path, "method=lora", *steps, *overrides)
    trainer = build_trainer(cfg, RunDir(tmp_path))
    trainer.model.train()
    batches = iter(trainer.train_loader)
    trainer.train_step(next(batches))  # step 0 (the FLOP count) and 1: optimizer state is created
    trainer.train_step(next(batches))
    for _ in range(3):  # steps 2-4
        batch = next(batches)
        model_only = syncs(lambda b=batch: trainer.model(**b).loss.backward())  # e.g. the mask's checks
        trainer.optimizer.zero_grad(set_to_none=True)
        assert syncs(lambda b=batch: trainer.train_step(b)) == model_only


def test_the_optimizer_is_fused_where_torch_has_the_kernel(tmp_path):
    trainer = build_trainer(tiny_config(tmp_path, "method=lora"), RunDir(tmp_path))
    assert trainer.optimizer.defaults["fused"] is True


# every preset of conf/method: the loop and the method add no host sync to the model's own per step,
# except Light-PEFT's pruning step (step 3 of these runs: it reads its importance scores once)
EVENT_SYNCS = {"light_peft": 20, "light_peft_adapter": 10}
# peft's AdaLoRA: its RankAllocator reads the budget threshold to the host (``kthvalue(...).item()``,
# peft/tuners/adalora/layer.py) in every step of its budgeting phase; peft's code, not peftlab's
EVERY_STEP_SYNCS = {"peft_adalora": 1}


@pytest.mark.parametrize("method", method_names())
def test_every_method_adds_at_most_its_bound_of_host_syncs_per_step(tmp_path, method):
    counted = count_method(method, tmp_path)
    every = EVERY_STEP_SYNCS.get(method, 0)
    assert counted.added <= EVENT_SYNCS.get(method, 0) + every, counted
    steady = [s - m for s, m in zip(counted.step, counted.model, strict=True)]
    assert max(sorted(steady)[:2]) <= every, counted  # at most one event step among steps 2-4
