"""``schedule.compile=true``: the training forward goes through torch.compile and takes the same steps;
methods whose hooks change parameters between steps are refused up front."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from peftlab.errors import ConfigError
from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir
from peftlab.train import trainer as loop

NO_DROPOUT = ["model.dropout=0.0", "model.head_dropout=0.0"]


def losses(tmp_path, *overrides: str) -> tuple[loop.Trainer, list[float]]:
    trainer = build_trainer(tiny_config(tmp_path, *NO_DROPOUT, *overrides), RunDir(tmp_path))
    trainer.model.train()
    batches = iter(trainer.train_loader)
    return trainer, [float(trainer.train_step(next(batches))) for _ in range(2)]


def test_compiled_forward_takes_the_same_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "COMPILE_BACKEND", "eager")  # dynamo's graph capture without inductor's build
    _, plain = losses(tmp_path / "plain")
    trainer, compiled = losses(tmp_path / "compiled", "schedule.compile=true")
    assert isinstance(trainer.forward_model, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled == pytest.approx(plain, abs=1e-5)


@pytest.mark.parametrize("method", ["aflora", "light_peft"])
def test_compile_is_refused_for_methods_that_change_parameters(tmp_path, method):
    with pytest.raises(ConfigError, match=f"schedule.compile=true: method {method} has per-step hooks"):
        build_trainer(tiny_config(tmp_path, f"method={method}", "schedule.compile=true"), RunDir(tmp_path))
