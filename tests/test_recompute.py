"""Activation checkpointing: the same gradients as without it (also through SPSFT's hand-written backward,
Light-PEFT's masks and score hooks, AFLoRA's frozen projections), and fewer saved bytes."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from peftlab.errors import ConfigError
from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir
from peftlab.train import accumulate, efficiency
from peftlab.train.recompute import enable_activation_checkpointing

COMMON = ["model=tiny_llama", "model.dropout=0.0", "model.head_dropout=0.0", "schedule.batch_size=8"]
METHODS = {"lora": [], "spsft": [], "light_peft": ["method.peft.dropout=0.0"], "aflora": [], "ia3": []}


def step_gradients(tmp_path, method: str, checkpointing: bool):
    """Gradients and saved bytes of one training forward/backward, and the trainer."""
    overrides = [*COMMON, f"method={method}", *METHODS[method]]
    cfg = tiny_config(tmp_path, *overrides, f"schedule.activation_checkpointing={str(checkpointing).lower()}")
    trainer = build_trainer(cfg, RunDir(tmp_path))
    trainer.model.train()
    if method == "light_peft":  # its module-score hooks see the recomputed forwards too
        trainer.method.scores.start_module_scores(trainer.model)
    batch = next(iter(trainer.train_loader))
    parts = accumulate.split(batch, None, trainer.model)
    saved = efficiency.saved_tensor_bytes(trainer.model, lambda: trainer.accumulate(parts))
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return trainer, grads, saved


@pytest.mark.parametrize("method", sorted(METHODS))
def test_checkpointing_gives_the_same_gradients_and_saves_less(tmp_path, method):
    plain, grads, saved = step_gradients(tmp_path / "plain", method, False)
    ckpt, ckpt_grads, ckpt_saved = step_gradients(tmp_path / "ckpt", method, True)
    assert (
        ckpt.model.backbone.is_activation_checkpointing
        and not plain.model.backbone.is_activation_checkpointing
    )
    assert grads.keys() == ckpt_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    assert ckpt_saved < 0.6 * saved, (ckpt_saved, saved)
    if method == "light_peft":  # (sum, tokens) per module: a forward counted twice keeps the ratio
        for name, (total, count) in plain.method.scores._step_sums.items():
            ckpt_total, ckpt_count = ckpt.method.scores._step_sums[name]
            assert float(ckpt_count) in (float(count), 2 * float(count))  # hooks may rerun in the recompute
            assert float(ckpt_total / ckpt_count) == pytest.approx(float(total / count), rel=1e-5)


def test_checkpointing_is_refused_for_a_model_without_it():
    model = torch.nn.Module()
    model.backbone = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="activation_checkpointing=true: the backbone Linear"):
        enable_activation_checkpointing(model)
