"""Gradient accumulation: 4 micro-batches of 4 take the steps of one batch of 16 (weights, frozen sets,
pruning and trained rows after 3 steps) for every method, and an LM task with uneven target lengths
weighs micro-batches by their target tokens."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir
from peftlab.train import accumulate

NO_DROPOUT = ["model.dropout=0.0", "model.head_dropout=0.0"]
METHODS = {  # method -> overrides that make it decide something within 3 steps, without dropout
    "lora": [],
    "dora": [],
    "elora": [],
    "aflora": ["method.delta_t=1", "method.t_initial=0.34", "method.t_final=0.34"],
    "adapter": ["method.dropout=0.0"],
    "light_peft": ["method.peft.dropout=0.0", "method.estimation_steps=2"],  # prunes, restarts at 2
    "spsft": [],
    "fft": [],
    "head": [],
    "ia3": [],
}


def trained_after(tmp_path, steps: int, *overrides: str):
    """The model and method after ``steps`` steps of the loop's own step on the first batches."""
    cfg = tiny_config(tmp_path, *NO_DROPOUT, f"schedule.max_steps={steps}", *overrides)
    trainer = build_trainer(cfg, RunDir(tmp_path))
    batches = iter(trainer.train_loader)
    for _ in range(steps):
        trainer.progress_loss = trainer._timed_step(next(batches))
    return trainer


def assert_same_model(one, other, atol: float = 2e-6) -> None:
    a, b = one.model.state_dict(), other.model.state_dict()
    assert a.keys() == b.keys()  # same pruned structure (Light-PEFT), same wrapped layers
    for name in a:
        assert a[name].shape == b[name].shape, name  # e.g. Light-PEFT's kept heads and ranks
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=name)
    flags = lambda t: {n: p.requires_grad for n, p in t.model.named_parameters()}  # noqa: E731
    assert flags(one) == flags(other)  # AFLoRA's frozen set


@pytest.mark.parametrize("method", sorted(METHODS))
def test_four_micro_batches_of_four_equal_one_batch_of_sixteen(tmp_path, method):
    common = [f"method={method}", *METHODS[method], "task.max_train_samples=48", "schedule.batch_size=16"]
    whole = trained_after(tmp_path / "whole", 3, *common)
    split = trained_after(tmp_path / "split", 3, *common, "schedule.micro_batch_size=4")
    assert_same_model(whole, split)
    if method == "aflora":  # a decision happened and is the same
        assert whole.method.frozen_at and whole.method.frozen_at == split.method.frozen_at
    if method == "light_peft":
        assert whole.method.record == split.method.record and whole.method.masks is None


def test_lm_micro_batches_are_weighed_by_target_tokens(tmp_path):
    common = [
        "model=tiny_llama",
        "task=gsm8k",
        "task.max_prompt_tokens=16",
        "task.max_target_tokens=160",
        "task.max_train_samples=8",
        "schedule.batch_size=4",
    ]
    whole = trained_after(tmp_path / "whole", 2, *common)
    split = trained_after(tmp_path / "split", 2, *common, "schedule.micro_batch_size=1")
    assert_same_model(whole, split)
    # the targets differ per example, so equal weights (a mean of micro-batch means) would differ
    batch = next(iter(whole.train_loader))
    parts = accumulate.split(batch, 1, whole.model)
    weights = [part.weight for part in parts]
    assert len(set(weights)) > 1 and sum(weights) == pytest.approx(1.0)


def test_uneven_micro_batches_give_the_whole_batch_gradient_and_loss(tmp_path):
    cfg = tiny_config(tmp_path, *NO_DROPOUT, "schedule.batch_size=8", "schedule.micro_batch_size=3")
    trainer = build_trainer(cfg, RunDir(tmp_path))
    batch = next(iter(trainer.train_loader))
    params = trainer.trainable

    def gradients(micro_batch_size):
        parts = accumulate.split(batch, micro_batch_size, trainer.model)
        loss = trainer.accumulate(parts)
        grads = [p.grad.clone() for p in params]
        trainer.optimizer.zero_grad(set_to_none=True)
        return [len(p.batch["labels"]) for p in parts], loss, grads

    sizes, loss, grads = gradients(3)
    assert sizes == [3, 3, 2]
    _, whole_loss, whole_grads = gradients(None)
    assert float(loss) == pytest.approx(float(whole_loss), abs=1e-6)
    for got, expected in zip(grads, whole_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-5)
