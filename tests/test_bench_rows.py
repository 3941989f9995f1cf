"""Bench rows for the faster-step comparisons: an ``@loader`` row steps through its loader's batches and
reports their padding (less when grouped by length), a row knows its precision, the matmul ceiling
is measured per dtype, and ``@<state>`` rows reach the state their method offers (``Method.bench_state``)."""

from __future__ import annotations

import pytest
import torch

from peftlab.errors import ConfigError
from peftlab.reporting.benchmark import BenchSettings, make_row, timed_step
from peftlab.run.folder import RunDir
from peftlab.train.efficiency import matmul_gflops

SETTINGS = BenchSettings(
    model="tiny_bert", batch_size=8, seq_len=64, steps=2, overrides=["progress_bar=false"]
)


def test_loader_rows_step_through_their_batches_and_report_padding(tmp_path):
    rows = {
        label: make_row(
            f"{label} method=lora task.max_train_samples=64 @loader {extra}",
            SETTINGS,
            4,
            RunDir(tmp_path / label),
        )
        for label, extra in (
            ("shuffled", "task.group_by_length=false"),
            ("grouped", "task.group_by_length=true"),
        )
    }
    for row in rows.values():
        assert len(row.batches) == 8 and row.precision == "fp32"
        seen = []
        for _ in range(9):
            seen.append(id(row.next_batch()))
        assert seen[:8] == [id(b) for b in row.batches] and seen[8] == seen[0]  # in turn, then again
        timed_step(row)
        assert len(row.times) == 1
    assert rows["grouped"].padding < rows["shuffled"].padding
    bf16 = make_row("bf16 method=lora schedule.precision=bf16", SETTINGS, 4, RunDir(tmp_path / "bf16"))
    assert bf16.precision == "bf16" and not bf16.batches and bf16.next_batch() is bf16.batch


def test_matmul_ceiling_is_measured_per_dtype():
    assert matmul_gflops(torch.float32, size=128, repeats=2) > 0
    assert matmul_gflops(torch.bfloat16, size=128, repeats=2) > 0


def test_state_rows_reach_the_state_their_method_offers(tmp_path):
    trainable = make_row("aflora method=aflora", SETTINGS, 4, RunDir(tmp_path / "a"))
    frozen = make_row("frozen method=aflora @frozen", SETTINGS, 4, RunDir(tmp_path / "f"))
    assert frozen.trainer.method.scorer.active == [] and trainable.trainer.method.scorer.active
    assert frozen.trainable < trainable.trainable and len(frozen.trainer.trainable) < len(
        trainable.trainer.trainable
    )  # the optimizer was rebuilt over what still trains
    spec = "pruned method=light_peft method.estimation_steps=2 @pruned"
    pruned = make_row(spec, SETTINGS, 6, RunDir(tmp_path / "p"))
    record = pruned.trainer.method.record
    assert record is not None and pruned.trainer.state.step == 2
    kept = f"PEFT modules kept: {len(record['ranks'])} of {len(record['module_scores'])}"
    assert pruned.note.startswith(kept)
    scoring = make_row(
        "s method=light_peft method.estimation_steps=6 @scoring", SETTINGS, 6, RunDir(tmp_path / "s")
    )
    method = scoring.trainer.method
    assert scoring.trainer.state.step == 3 and method.record is None and method.scores.modules_on
    assert scoring.note == "scoring steps 4-6"


def test_a_state_the_method_does_not_offer_is_refused_with_its_states(tmp_path):
    with pytest.raises(
        ConfigError, match=r"^method aflora has no benchmark state @pruned; its states: @frozen$"
    ):
        make_row("x method=aflora @pruned", SETTINGS, 4, RunDir(tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"^method lora has no benchmark state @frozen; its states: none$"):
        make_row("x method=lora @frozen", SETTINGS, 4, RunDir(tmp_path / "l"))
