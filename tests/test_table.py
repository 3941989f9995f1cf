"""scripts/table.py turns run folders into mean ± std over seeds, by hand-checkable numbers; the one reader
of run folders puts each task's metric in percent by its declared scale; ``--paper`` sets ours beside the
published numbers; runs and sweeps draw their curves from metrics.jsonl."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from omegaconf import OmegaConf

from peftlab.figures import CURVES, curves, read_metrics, run_series
from peftlab.registry import TASKS
from peftlab.reporting import runs_table
from peftlab.reporting.paper_tables import TABLES, Row
from peftlab.reporting.results import find_runs
from peftlab.reporting.sweep import write_summary
from peftlab.run.experiment import run_experiment
from peftlab.tasks.base import Example

ROOT = Path(__file__).resolve().parents[1]


def job(
    root: Path,
    name: str,
    method: str,
    task: str,
    seed: int,
    score: float | None,
    params: float,
    secs: float = 10,
    extra: str = "",
    baseline: float | None = None,
    units: bool = True,
) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    config = (
        f"method:\n  name: {method}\n{extra}task:\n  name: {task}\nseed: {seed}\nmodel:\n  name: minilm\n"
    )
    (folder / "config.yaml").write_text(config)
    if score is not None:
        metric = {"cola": "matthews_correlation", "cnn_dm": "rougeL"}.get(task, "accuracy")
        best = score + (10 if task == "cnn_dm" else 0.1)
        results = {
            "status": "completed",
            "main_metric": metric,
            "final_eval": {metric: score},
            "best_eval": {metric: best},
            "trainable_params": {"mean_over_steps": params, "mean_over_steps_without_head": params / 2},
            "train_time_s": secs,
            "median_step_time_s": secs / 100,
        }
        if units:  # as the trainer writes them: ROUGE is in percent already, accuracy a fraction
            results["metric_units"] = {metric: "percent" if task == "cnn_dm" else "fraction", "loss": "loss"}
        if baseline is not None:
            results["baseline"] = {"kind": "majority class (0)", "metrics": {metric: baseline}}
        (folder / "results.json").write_text(json.dumps(results))


def table(*args: str | Path) -> list[str]:
    """The table command's output, run in this process (a subprocess would import torch again)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runs_table.main([str(a) for a in args])
    return out.getvalue().splitlines()


def test_table_mean_std_params_and_missing_jobs(tmp_path):
    job(tmp_path, "0", "lora", "rte", 1, 0.60, 2e6, secs=10)
    job(tmp_path, "1", "lora", "rte", 2, 0.70, 2e6, secs=20)
    job(tmp_path, "2", "lora", "cola", 1, 0.50, 1e6, secs=30)
    job(tmp_path, "3", "aflora", "rte", 1, 0.65, 0.5e6)
    job(tmp_path, "4", "aflora", "cola", 1, None, 0.5e6)  # killed: no results.json
    out = subprocess.run(  # the script, once: a wrapper of the installed package's command
        [sys.executable, str(ROOT / "scripts" / "table.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout
    lines = out.splitlines()
    assert lines[0] == "|  | #params | cola | rte | Avg | train s | step ms |"
    # lora: rte mean 65, sample std of (60, 70) = 7.07; cola 50 (one seed); avg (50 + 65) / 2 = 57.5
    # #params: mean over the row's jobs (2M, 2M, 1M) = 1.667M; train s: mean of (10, 20, 30) = 20
    # step ms: mean of the jobs' median step times (secs / 100 s each): (100 + 200 + 300) / 3 = 200
    assert "| lora | 1.667M | 50.00 ± 0.00 (1) | 65.00 ± 7.07 (2) | 57.50 | 20 | 200 |" in lines
    # no average over a missing cell
    assert "| aflora | 0.500M |  | 65.00 ± 0.00 (1) |  | 10 | 100 |" in lines
    assert any(line.startswith("- not counted: 4: incomplete: no results.json") for line in lines)


def test_table_best_evaluation_and_adapter_only_params(tmp_path):
    job(tmp_path, "0", "aflora", "rte", 1, 0.60, 2e6)
    job(tmp_path, "1", "aflora", "rte", 2, 0.70, 2e6)
    lines = table(tmp_path, "--select", "best", "--params", "adapter")
    assert "| aflora | 1.000M | 75.00 ± 7.07 (2) | 75.00 | 10 | 100 |" in lines  # best = final + 10
    out = "\n".join(lines)
    assert "best dev metric" in out and "without the head" in out


def test_each_task_declares_its_scale_rouge_is_not_multiplied_twice(tmp_path):
    assert TASKS.get("cnn_dm").metric_scale("rougeL") == 1.0  # metrics.rouge reports x100
    assert TASKS.get("alpaca").metric_scale("rougeL") == 1.0
    assert TASKS.get("alpaca").metric_scale("zero_shot/acc") == 100.0  # a fraction
    assert TASKS.get("mnli").metric_scale("accuracy_mm") == 100.0
    assert TASKS.get("rte").metric_scale("loss") == 1.0
    job(tmp_path, "0", "lora", "cnn_dm", 1, 15.97, 1e6, baseline=None)
    job(tmp_path, "1", "lora", "rte", 1, 0.6, 1e6, baseline=0.527)
    job(tmp_path, "2", "aflora", "rte", 1, 0.7, 1e6)
    lines = table(tmp_path)
    assert lines[0] == "|  | #params | cnn_dm | rte | Avg | train s | step ms |"
    assert "| lora | 1.000M | 15.97 ± 0.00 (1) | 60.00 ± 0.00 (1) | 37.98 | 10 | 100 |" in lines
    assert "| no learning (majority / chance) |  |  | 52.70 |  |  |  |" in lines  # only rte's run knows one
    # best: ROUGE 15.97 + 10 stays in its unit; the rte fraction + 0.1 becomes +10 points
    assert "| lora | 1.000M | 25.97 ± 0.00 (1) | 70.00 ± 0.00 (1) | 47.98 | 10 | 100 |" in table(
        tmp_path, "--select", "best"
    )


def test_a_results_json_without_metric_units_reads_fractions_with_a_warning(tmp_path, caplog):
    """An older run folder: losses stay losses, every other metric is a fraction (x100), even ROUGE,
    which such a folder cannot say is in percent; one warning names the folder."""
    job(tmp_path, "0", "lora", "cnn_dm", 1, 0.1597, 1e6, units=False)
    job(tmp_path, "1", "lora", "rte", 1, 0.6, 1e6, units=False, baseline=0.527)
    with caplog.at_level(logging.WARNING, logger="peftlab.reporting.results"):
        lines = table(tmp_path)
    assert "| lora | 1.000M | 15.97 ± 0.00 (1) | 60.00 ± 0.00 (1) | 37.98 | 10 | 100 |" in lines
    warned = [r.getMessage() for r in caplog.records if "metric_units" in r.getMessage()]
    assert len(warned) == 2 and all("lora" not in w for w in warned)  # one per folder, not per value
    assert {w.split(":")[0] for w in warned} == {str(tmp_path / "0"), str(tmp_path / "1")}
    (run,) = [r for r in find_runs(tmp_path) if r.path.name == "1"]
    assert run.scale("eval_loss") == 1.0 and run.scale("loss") == 1.0 and run.scale("f1") == 100.0


def test_agg_median_over_seeds(tmp_path):
    for seed, score in enumerate((0.60, 0.70, 0.95)):
        job(tmp_path, str(seed), "lora", "rte", seed, score, 1e6)
    # mean 75, median 70; the std is the same sample std (18.03) either way
    assert "| lora | 1.000M | 75.00 ± 18.03 (3) | 75.00 | 10 | 100 |" in table(tmp_path)
    assert "| lora | 1.000M | 70.00 ± 18.03 (3) | 70.00 | 10 | 100 |" in table(tmp_path, "--agg", "median")


def test_paper_mode_sets_ours_beside_the_published_numbers(tmp_path):
    aflora = "  pm_trainable: ffn\n  freezing: true\n"
    job(tmp_path, "0", "aflora", "rte", 1, 0.80, 0.2e6, extra="", baseline=0.5)
    (tmp_path / "0" / "config.yaml").write_text(
        f"method:\n  name: aflora\n{aflora}task:\n  name: rte\n  max_train_samples: 384\nseed: 1\n"
        "model:\n  name: minilm\n"
    )
    job(tmp_path, "1", "aflora", "rte", 2, 0.90, 0.2e6, extra=aflora)
    job(tmp_path, "2", "lora", "rte", 1, 0.50, 1e6)  # matches no row of Table 4
    lines = table(tmp_path, "--paper", "aflora-t4")
    assert lines[0].startswith("AFLoRA (Liu et al. 2024) Table 4")
    # ours: mean of 80 and 90 = 85 against the paper's 88.09; marked: another model, a reduced training set
    assert (
        "| AFLoRA | RTE | 85.00 | 88.09 | -3.09 | 2 | 0.200M | 0.14M | max_train_samples=384; "
        "model minilm (paper: deberta_v3_base) |" in lines
    )
    assert "| PM frozen | CoLA |  | 70.36 |  |  |  | 0.08M |  |" in lines  # no runs: the paper's alone
    assert not any("| Avg |" in line for line in lines)  # ours covers one column of six
    median = table(tmp_path, "--paper", "aflora-t4", "--agg", "median")
    assert any(line.startswith("| AFLoRA | RTE | 85.00 |") for line in median)  # two seeds: same centre
    t1 = table(tmp_path, "--paper", "aflora-t1")
    sora = [line for line in t1 if line.startswith("| SoRA (r=4) | CoLA |  | 71.05 |")]
    assert sora and "not in peftlab" in sora[0]
    assert "| AdaLoRA | CoLA |  | 70.86 |  |  |  | 1.27M |  |" in t1  # method=peft_adalora, no run here


def test_paper_tables_agree_where_the_papers_repeat_a_row():
    """The papers print some rows twice: a typo in one copy shows up here."""
    t1 = TABLES["aflora-t1"]
    aflora_six = dict(zip([c.label for c in t1.columns], t1.rows[-1].values, strict=True))
    for name, label in (
        ("aflora-t4", "AFLoRA"),
        ("aflora-t5", "FFN only (AFLoRA)"),
        ("aflora-t8", "independently"),
    ):
        table_ = TABLES[name]
        row = next(r for r in table_.rows if r.label == label)
        assert dict(zip([c.label for c in table_.columns], row.values, strict=True)) == {
            c.label: aflora_six[c.label] for c in table_.columns
        }
    spsft10 = next(r for r in TABLES["spsft-t3"].rows if r.label == "SPSFT 10 ep")
    assert TABLES["spsft-t5"].rows[0].values == spsft10.values  # Taylor without dependencies = SPSFT 10 ep
    for table_ in TABLES.values():
        assert all(len(r.values) == len(table_.columns) for r in table_.rows), table_.name


def fake_metrics(folder: Path, params: list[int], accuracy: list[float]) -> None:
    rows = [
        {"step": 2 * i + 2, "train_loss": 1.0 / (i + 1), "trainable_params": p} for i, p in enumerate(params)
    ]
    rows += [{"step": 2 * i + 2, "eval_accuracy": a} for i, a in enumerate(accuracy)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "tr')


def test_sweep_curves_overlay_every_job_one_colour_per_method(tmp_path):
    for name, method, seed in (("0", "lora", 1), ("1", "lora", 2), ("2", "aflora", 1)):
        job(tmp_path, name, method, "rte", seed, 0.6, 1e6)
        fake_metrics(tmp_path / name, [100, 100, 40] if method == "aflora" else [300] * 3, [0.5, 0.6])
    runs = find_runs(tmp_path)
    jobs = [
        (r.get("method.name"), run_series(read_metrics(r.path / "metrics.jsonl"), "accuracy")) for r in runs
    ]
    png, plotted = curves(jobs, "accuracy")
    (tmp_path / "check.png").write_bytes(png)
    assert {panel: len(lines) for panel, lines in plotted.items()} == {
        "train_loss": 3,
        "eval": 3,
        "trainable_params": 3,
    }
    aflora = [line for line in plotted["trainable_params"] if line[0] == "aflora"]
    assert aflora == [("aflora", [2, 4, 6], [100, 100, 40])]  # the torn last line was skipped
    assert plotted["eval"][0][1:] == ([2, 4], [0.5, 0.6])
    rows = write_summary(tmp_path)
    assert_png(tmp_path / CURVES)
    assert [(r["method"], r["value"], r["baseline"]) for r in rows] == [("lora", 60.0, None)] * 2 + [
        ("aflora", 60.0, None)
    ]  # in percent, as every table


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))  # written atomically: no temp file left


def test_real_run_writes_baseline_curves_and_table(tmp_path):
    """A tiny RTE run: results.json holds the majority-class score of its dev split, curves.png plots
    its metrics.jsonl, and the table reads the run folder."""
    cfg = tiny_config(
        tmp_path, "task=rte", "schedule.max_steps=4", "schedule.eval_every_steps=2", "curves=true"
    )
    results = run_experiment(cfg)
    task = TASKS.get("rte")(cfg.task, cfg.data_root)
    train, dev = (
        task.limit(task.load_split("train"), "train"),
        task.limit(task.load_split("validation"), "dev"),
    )
    labels = [e.label for e in train]
    majority = 0 if labels.count(0) >= labels.count(1) else 1  # a tie goes to the lower label id
    assert results["baseline"]["metrics"]["accuracy"] == np.mean([e.label == majority for e in dev])
    assert_png(tmp_path / CURVES)
    series = run_series(read_metrics(tmp_path / "metrics.jsonl"), "accuracy")
    assert series["eval"][0] == [2, 4] and len(series["train_loss"][0]) == 2
    assert series["eval"][1][-1] == results["final_eval"]["accuracy"]
    lines = table(tmp_path)
    value = 100 * results["final_eval"]["accuracy"]
    assert any(line.startswith("| lora | 0.") and f"| {value:.2f} ± 0.00 (1) |" in line for line in lines)
    base = 100 * results["baseline"]["metrics"]["accuracy"]
    assert f"| no learning (majority / chance) |  | {base:.2f} |  |  |  |" in lines


PAPERS = ROOT.parent / "shared" / "papers"


def printed_numbers(line: str) -> list[float]:
    """A paper table line's decimals, without counts and sizes (184.42M, 3.7k, 23.46GB, 2.37%, 1.2\\%)."""
    return [float(x) for x in re.findall(r"(\d+\.\d+)(?![MKkG%\\\d])", line)]


def in_threes(rows: tuple[Row, ...]) -> list[tuple[Row, ...]]:
    return [tuple(rows[i : i + 3]) for i in range(0, len(rows), 3)]


def spsft_t2_printed() -> tuple[list[tuple[float, ...]], list[tuple[str, ...]]]:
    """SPSFT Table 2 as printed: per (model, epochs) nine accuracies, dense / head / SPSFT for each data
    set in turn (a row holds every third); per model the nine #param."""
    groups = in_threes(TABLES["spsft-t2"].rows)
    accuracies = [tuple(row.values[c] for c in range(3) for row in group) for group in groups]
    sizes = {
        group[0].model: tuple(row.params.split(" / ")[c] for c in range(3) for row in group)
        for group in groups
    }
    return accuracies, list(sizes.values())


def spsft_t4_printed() -> dict[str, list[tuple[float, ...]]]:
    """SPSFT Table 4 as printed: per model the line without and the line with dependencies, each the
    l2 / Taylor / QMTaylor accuracies of every data set in turn (Caltech101 has no QMTaylor)."""
    printed: dict[str, list[tuple[float, ...]]] = {}
    for group in in_threes(TABLES["spsft-t4"].rows):
        line = tuple(row.values[c] for c in range(3) for row in group if row.values[c] is not None)
        printed.setdefault(group[0].model, []).append(line)
    return printed


@pytest.mark.skipif(
    not PAPERS.is_dir(), reason="the papers' text (shared/papers) is not beside this checkout"
)
def test_paper_tables_are_the_numbers_the_papers_print():
    """Every row of every table is one line of the paper's text (values, then the Avg where printed);
    AFLoRA's Table 8 is printed transposed: one line per task."""
    for name, table_ in TABLES.items():
        lines = (PAPERS / f"{name.split('-')[0]}.txt").read_text().splitlines()
        if name == "spsft-t2":  # printed as "loss, acc" pairs: the accuracies of each line, in order
            pairs = [x for x in lines if re.fullmatch(r"(5|10|30)(\t\d+\.\d+, \d+\.\d+){9}", x)]
            accuracies, sizes = spsft_t2_printed()
            assert [tuple(printed_numbers(x)[1::2]) for x in pairs] == accuracies
            assert [tuple(x.split("\t")[1:10]) for x in lines if x.startswith("#param:\t")] == sizes
            continue
        if name == "spsft-t4":  # two lines per model (without, with dependencies), eight accuracies each
            start = lines.index(next(x for x in lines if x.startswith("model\tdata\tdep")))
            end = lines.index(next(x for x in lines if x.startswith("Table 4:")))
            printed = [tuple(printed_numbers(x)) for x in lines[start:end] if len(printed_numbers(x)) == 8]
            ours = spsft_t4_printed()
            assert printed == [line for pair in ours.values() for line in pair]
            spsft5 = {r.label: r.values for r in TABLES["spsft-t2"].rows}
            for model, (without, with_) in ours.items():  # the dep-mark reading: Table 2's SPSFT
                table2 = spsft5[f"{model} SPSFT 5 ep"]  # (ViT CIFAR100: 88.06 here, 88.13 in Table 2)
                assert sum(a == b for a, b in zip(without[1::3], table2, strict=True)) >= 2, model
                assert not any(a == b for a, b in zip(with_[1::3], table2, strict=True)), model
            continue
        if name == "aflora-t8":
            for i, column in enumerate(table_.columns):
                line = next(
                    x for x in lines if x.startswith(f"{column.label}\t") and len(printed_numbers(x)) == 2
                )
                assert printed_numbers(line) == [row.values[i] for row in table_.rows], line
            continue
        for row in table_.rows:
            expected = [*row.values, *([row.avg] if row.avg is not None else [])]
            assert any(printed_numbers(x) == expected for x in lines), (name, row.label, expected)
            assert row.params == "" or row.params in "\n".join(lines), (name, row.label, row.params)


def test_baseline_is_the_majority_class_or_chance():
    def task(name: str):
        return TASKS.get(name)(OmegaConf.create({"name": name}), None)

    train = [Example("a", None, 1)] * 3 + [Example("b", None, 0)] * 2  # majority: 1
    dev = {"validation": [Example("c", None, label) for label in (0, 1, 1, 1)]}
    assert task("sst2").baseline(train, dev) == {"kind": "majority class (1)", "metrics": {"accuracy": 0.75}}
    # MRPC: always 1 -> tp 3, fp 1, fn 0 -> F1 = 6 / 7
    assert task("mrpc").baseline(train, dev)["metrics"] == pytest.approx({"accuracy": 0.75, "f1": 6 / 7})
    assert task("stsb").baseline(train, dev) == {
        "kind": "chance",
        "metrics": {"pearson": 0.0, "spearmanr": 0.0},
    }
    assert task("copa").baseline(train, dev) == {"kind": "chance", "metrics": {"accuracy": 0.5}}
    assert task("multirc").baseline(train, dev) is None  # grouped scores: no constant reference
    tie = [Example("a", None, 1), Example("b", None, 0)]
    assert task("rte").baseline(tie, dev)["kind"] == "majority class (0)"  # a tie: the lower label id
