"""A bf16 base (``model.dtype=bfloat16``, trained tensors fp32, forwards autocast) on the tiny models: every
method trains a few steps to a finite loss and evaluates (SPSFT merged after training too), SPSFT's conv
and BatchNorm rows on the tiny EfficientNet, zero-shot scoring through lm-eval, and the benchmark's
inference forwards, which run in the row's autocast (an fp32 model with ``schedule.precision=bf16``
infers in bf16 as it trains)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

from peftlab.reporting.benchmark import BenchSettings, run_rows
from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir

BF16 = ["model.dtype=bfloat16", "measure.flops=false"]
CASES = {
    "lora": ["method=lora"],
    "dora": ["method=dora"],
    "elora": ["method=elora"],
    "aflora": ["method=aflora"],
    "adapter": ["method=adapter"],
    "spsft": ["method=spsft", "method.importance_batches=2"],
    "spsft_official_merged": [
        "method=spsft_official",
        "method.importance=qm_taylor",
        "method.importance_batches=2",
        "method.merge_after_training=true",
    ],
    "light_peft": ["method=light_peft", "method.estimation_steps=2"],
    "light_peft_adapter": ["method=light_peft_adapter", "method.estimation_steps=2"],
    "fft": ["method=fft"],
    "head": ["method=head"],
    "peft": ["method=peft"],
    "spsft_conv_rows_merged": [
        "model=tiny_efficientnet",
        "task=digits",
        "method=spsft_vision",
        "method.importance_batches=1",
        "method.merge_after_training=true",
    ],
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_method_trains_and_evaluates_on_a_bf16_base(tmp_path, case):
    cfg = tiny_config(tmp_path, "schedule.max_steps=3", *BF16, *CASES[case])
    trainer = build_trainer(cfg, RunDir(tmp_path))
    assert trainer.precision.name == "bf16"
    trainer.model.train()
    batch = next(iter(trainer.train_loader))
    losses = [float(trainer.train_step(batch)) for _ in range(3)]
    trainer.method.on_train_end(trainer.state)
    metrics = trainer.evaluate()
    assert all(math.isfinite(v) for v in losses), losses
    assert math.isfinite(metrics["loss"]), metrics
    if case.endswith("_merged"):
        assert trainer.method.merged


def test_zero_shot_scores_a_bf16_base_with_fp32_adapters(tmp_path):
    pytest.importorskip("lm_eval")
    overrides = [
        "task=alpaca",
        "model=tiny_llama",
        "method=lora",
        "method.target_modules=[q_proj,v_proj]",
        "task.max_train_samples=8",
        "task.max_eval_samples=2",
        "task.max_new_tokens=2",
        "task.max_prompt_tokens=64",
        "task.max_target_tokens=16",
        "task.zero_shot=[arc_easy]",
        "task.zero_shot_limit=2",
    ]
    trainer = build_trainer(
        tiny_config(tmp_path, "schedule.max_steps=1", *BF16, *overrides), RunDir(tmp_path)
    )
    trainer.train_step(next(iter(trainer.train_loader)))
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["zero_shot/acc"] <= 1.0 and math.isfinite(metrics["loss"])


def test_bench_inference_runs_in_each_rows_autocast(tmp_path):
    settings = BenchSettings(
        model="tiny_bert", batch_size=4, seq_len=16, steps=1, rounds=1, warmup=0, flops=False, inference=True
    )
    specs = [
        "lora method=lora model.dtype=bfloat16",
        "spsft method=spsft method.importance_batches=1 model.dtype=bfloat16",
        "fp32_base method=lora schedule.precision=bf16",
    ]
    seen: dict[int, list] = {}
    build = build_trainer

    def recording(cfg, run_dir, *args, **kwargs):
        trainer = build(cfg, run_dir, *args, **kwargs)
        dtypes = seen.setdefault(len(seen), [])

        def note(module, args, kwargs):
            if not module.training:  # the benchmark's inference forwards (eval mode)
                dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)

        trainer.model.register_forward_pre_hook(note, with_kwargs=True)
        return trainer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("peftlab.reporting.benchmark.build_trainer", recording)
        rows = run_rows(specs, settings, tmp_path)
    for i, row in enumerate(rows):
        assert len(row.infer_times) == 1 and row.times and row.precision == "bf16", row.label
        assert seen[i] and all(d == torch.bfloat16 for d in seen[i]), (row.label, seen[i])
