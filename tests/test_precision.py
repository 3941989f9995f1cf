"""Mixed precision: on a bf16 base the trained tensors and Adam state are fp32 (and train), fp16 trains
on CPU with a loss scaler whose skipped steps are reported, and a NaN in fp16 blames the dtype."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from peftlab.errors import ConfigError, TrainingDiverged
from peftlab.run.experiment import build_trainer, run_experiment
from peftlab.run.folder import RunDir
from peftlab.train.precision import autocast_dtype

LLAMA = ["model=tiny_llama", "model.dropout=0.0", "schedule.max_steps=3"]


@pytest.mark.parametrize("method", ["lora", "spsft"])
def test_bf16_base_trains_fp32_tensors_with_fp32_adam_state(tmp_path, method):
    trainer = build_trainer(
        tiny_config(tmp_path, *LLAMA, "model.dtype=bfloat16", f"method={method}"), RunDir(tmp_path)
    )
    frozen = [p for p in trainer.model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # the base stays in model.dtype
    assert trainer.trainable and all(p.dtype == torch.float32 for p in trainer.trainable)
    before = [p.detach().clone() for p in trainer.trainable]
    batches = iter(trainer.train_loader)
    for _ in range(2):
        trainer._timed_step(next(batches))
    states = [trainer.optimizer.state[p] for p in trainer.trainable]
    assert all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in states)
    # updates of size ~lr (2e-4 here) would round away in bf16 weights near 1; in fp32 they all land
    assert all(not torch.equal(p, old) for p, old in zip(trainer.trainable, before, strict=True))
    assert trainer.precision.name == "bf16"  # a bf16 base autocasts to bf16 although precision=fp32


def test_fp16_trains_on_cpu_with_a_loss_scaler_and_counts_skipped_steps(tmp_path):
    cfg = tiny_config(
        tmp_path, *LLAMA, "model.dtype=float16", "schedule.max_steps=4", "schedule.log_every_steps=1"
    )
    results = run_experiment(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["precision"] == "fp16" and saved["skipped_steps"] == results["skipped_steps"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train_loss" in r]
    assert len(train) == 4 and all(r["train_loss"] == r["train_loss"] for r in train)  # no NaN
    skipped = [r["skipped_steps"] for r in train]
    assert skipped == sorted(skipped) and skipped[-1] == saved["skipped_steps"] < 4


def test_a_nan_in_fp16_is_blamed_on_the_dtype_not_the_learning_rate(tmp_path):
    for dtype, message in (
        ("float16", "this is the dtype, not the learning rate"),
        ("float32", "lower schedule.lr"),
    ):
        folder = tmp_path / dtype
        trainer = build_trainer(tiny_config(folder, *LLAMA, f"model.dtype={dtype}"), RunDir(folder))
        with pytest.raises(TrainingDiverged, match=message):
            trainer._log_train(torch.tensor(float("nan")), 1)


def test_autocast_dtype_follows_precision_and_base():
    assert autocast_dtype("fp32", torch.float32) is None
    assert autocast_dtype("bf16", torch.float32) == torch.bfloat16
    assert autocast_dtype("fp32", torch.float16) == torch.float16  # fp32 tensors meet the base in fp16
    with pytest.raises(ConfigError, match="schedule.precision=bf16 with model.dtype=torch.float16"):
        autocast_dtype("bf16", torch.float16)
