"""peftlab's loop vs transformers' Trainer + peft vs a plain loop (``peftlab.reporting.vs_trainer``), on a
tiny random BERT: all three train, and start from the same point on the same batches."""

from __future__ import annotations

import math

import pytest

from peftlab.reporting.vs_trainer import Settings, compare, render, summarise
from peftlab.reporting.vs_trainer.__main__ import parse_args
from peftlab.reporting.vs_trainer.loops import PEFTLAB, PLAIN, TRAINER

TINY = dict(model="tiny_bert", train_samples=16, batch_size=8, max_length=32, steps=2, repeats=1)
FEW_DEV = ["task.max_eval_samples=32"]


@pytest.fixture(scope="module")
def lora_report():
    return compare(Settings(**TINY, overrides=FEW_DEV))


def test_three_loops_train_and_score(lora_report):
    assert list(lora_report.runs) == [PEFTLAB, TRAINER, PLAIN]
    for runs in lora_report.runs.values():
        (run,) = runs
        assert len(run.losses) == len(run.step_times) == 2
        assert all(math.isfinite(x) for x in run.losses)
        assert set(run.metrics) >= {"accuracy", "f1"}
        assert run.train_s > 0
    lines = render(lora_report).splitlines()
    assert lines[0].split()[:2] == ["loop", "epoch"]
    assert [line.split()[0] for line in lines[1:4]] == [PEFTLAB, TRAINER, PLAIN]


def test_same_start_same_batches(lora_report):
    """Same step-0 weights, batches and dropout masks: the first-step losses agree to float noise (a
    wrong head or LoRA copy, another batch or another RNG state moves them by ~1e-2)."""
    runs = {name: runs[0] for name, runs in lora_report.runs.items()}
    first = runs[PEFTLAB].losses[0]
    assert abs(runs[PLAIN].losses[0] - first) < 1e-5
    assert abs(runs[TRAINER].losses[0] - first) < 1e-5
    assert runs[PEFTLAB].shapes == runs[TRAINER].shapes == runs[PLAIN].shapes
    # huggingface peft's LoRA (+ the head in modules_to_save) trains as many parameters as peftlab's
    assert runs[TRAINER].trainable == runs[PEFTLAB].trainable == runs[PLAIN].trainable


def test_same_updates_across_an_epoch():
    """Without dropout, every step's loss agrees over 5 steps on 3 batches per epoch: the same LR
    schedule, Adam settings and data order across the epoch boundary in all three loops (one more
    warmup step moves a loss by ~1e-3; weight decay 0.01 over 5 steps moves none by 1e-5, and the
    gradient norms stay under the clipping threshold: neither is checked here)."""
    settings = Settings(
        **{**TINY, "train_samples": 24, "steps": 5},
        overrides=[*FEW_DEV, "model.dropout=0.0", "model.head_dropout=0.0"],
    )
    losses = {name: runs[0].losses for name, runs in compare(settings).runs.items()}
    assert len(losses[PEFTLAB]) == 5
    for name in (TRAINER, PLAIN):
        assert losses[name] == pytest.approx(losses[PEFTLAB], abs=1e-5), name


def test_flops_per_length_match_peftlab_counter(lora_report):
    """The FLOPs model (three counts on the peft model) gives peftlab's own count of its first step."""
    run = lora_report.runs[PEFTLAB][0]
    batch, length = run.shapes[0]
    assert run.flops_per_step and batch * lora_report.flops_at(length) == pytest.approx(
        run.flops_per_step, rel=1e-12
    )


def test_metric_disagreement_warns(lora_report):
    rows = summarise(lora_report)
    assert not any(line.startswith("WARNING") for line in render(lora_report).splitlines())
    rows[2]["metrics"]["accuracy"] += 0.03  # type: ignore[index]
    from peftlab.reporting.vs_trainer import disagreements

    (warning,) = disagreements(rows)
    assert "accuracy differs by 3.0 points" in warning


def test_fft_bf16_grouped_and_markdown():
    report = compare(
        Settings(**TINY, method="fft", precision="bf16", group_by_length=True, overrides=FEW_DEV)
    )
    for runs in report.runs.values():
        assert all(math.isfinite(x) for x in runs[0].losses)
    counts = {runs[0].trainable for runs in report.runs.values()}
    assert len(counts) == 1
    lines = render(report, markdown=True, command="cmd", date="today").splitlines()
    assert lines[0] == "`cmd` (today)"
    assert lines[2].startswith("| loop |") and len([x for x in lines if x.startswith("| ")]) == 4


def test_cli_options():
    settings, options = parse_args(["--steps", "3", "--train-samples", "0", "--threads", "0", "--markdown"])
    assert (settings.steps, settings.train_samples, settings.threads) == (3, None, None)
    assert options.markdown and options.json is None


def test_fast_vs_default_runs_peftlab_alone_with_the_fast_options():
    """--fast-vs-default: peftlab's loop in bf16 on grouped batches, the Trainer and plain loops at the
    given settings (fp32, peftlab's ungrouped order); a ceiling per precision, and the notes say so."""
    settings, _ = parse_args(["--fast-vs-default"])
    assert settings.fast_vs_default and settings.peftlab_side().precision == "bf16"
    assert parse_args([])[0].fast_vs_default is None  # stored runs without the key match the same filter
    tiny = {**TINY, "train_samples": 24, "steps": 3, "max_length": 128}  # one epoch, no truncation
    report = compare(Settings(**tiny, overrides=FEW_DEV, fast_vs_default=True))
    runs = {name: runs[0] for name, runs in report.runs.items()}
    assert runs[TRAINER].shapes == runs[PLAIN].shapes
    padded = {name: sum(b * n for b, n in run.shapes) for name, run in runs.items()}
    assert padded[PEFTLAB] < padded[PLAIN]  # the same examples in batches of similar length
    assert abs(runs[PLAIN].losses[0] - runs[TRAINER].losses[0]) < 1e-5
    assert set(report.ceilings) == {"fp32", "bf16"} and report.ceiling_gflops == report.ceilings["fp32"]
    assert any(line.startswith("FAST vs DEFAULT: peftlab") for line in render(report).splitlines())


def test_fast_options_pick_which_fast_settings_peftlab_takes():
    """--fast-options group_by_length: peftlab in fp32 on grouped batches (all of them: stored as None);
    an unknown name, or the option without --fast-vs-default, is refused naming the allowed ones."""
    settings, _ = parse_args(["--fast-vs-default", "--fast-options", "group_by_length"])
    side = settings.peftlab_side()
    assert (side.precision, side.group_by_length) == ("fp32", True)
    assert settings.fast_options == ["group_by_length"]
    everything = parse_args(["--fast-vs-default", "--fast-options", "group_by_length,precision"])[0]
    assert everything.fast_options is None and everything.peftlab_side().precision == "bf16"
    for argv, why in (
        (["--fast-vs-default", "--fast-options", "compile"], "'compile' is not one"),
        (["--fast-options", "precision"], "it needs --fast-vs-default"),
    ):
        with pytest.raises(SystemExit, match=f"{why}; allowed: precision,group_by_length"):
            parse_args(argv)
