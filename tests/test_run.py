"""End-to-end: the CLI on the tiny model writes every output; a multirun makes one dir per job;
a saved adapter reloads to identical predictions; bad input fails before work is lost."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli, tiny_config

from peftlab.errors import ConfigError, TrainingDiverged
from peftlab.models.heads import ModelOutput, SequenceClassifier
from peftlab.run.experiment import run_experiment
from peftlab.tasks.data_root import data_root_candidates

QUICK = [
    "model=tiny_bert",
    "schedule=quick",
    "task.max_train_samples=32",
    "task.max_eval_samples=24",
    "progress_bar=false",
]


def test_cli_run_writes_every_output(tmp_path):
    run = tmp_path / "run"
    proc = cli(*QUICK, "task=mrpc", f"hydra.run.dir={run}", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "results.json",
        "adapter.safetensors",
        "adapter.json",
        "peftlab.log",
        "overrides.yaml",
        ".hydra/config.yaml",  # Hydra's record of the job
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
        "curves.png",
    ):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["steps"] == 4
    assert set(results["final_eval"]) == {"accuracy", "f1", "loss"}
    assert results["metric_units"] == {"accuracy": "fraction", "f1": "fraction", "loss": "loss"}
    assert results["trainable_params"]["start"] == results["trainable_params"]["end"] > 0
    timed = ("train_time_s", "median_step_time_s", "final_eval_time_s", "peak_memory_bytes", "samples_per_s")
    for key in (*timed, "flops_per_step"):
        assert results[key] > 0, key
    # the step's GFLOP/s against this machine's matmul ceiling, measured in the run (not a constant)
    ceiling = results["matmul_ceiling_gflops"]
    assert ceiling > 0 and results["fraction_of_matmul_ceiling"] == results["achieved_gflops"] / ceiling
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train_loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4]
    assert all({"lr", "trainable_params", "step_time_s"} <= set(r) for r in train_rows)
    assert any("eval_accuracy" in r for r in rows)
    assert "final mrpc dev accuracy" in (run / "peftlab.log").read_text()

    # a finished run folder is not overwritten silently
    kept = ("config.yaml", "overrides.yaml", "results.json", ".hydra/config.yaml", ".hydra/overrides.yaml")
    before = {name: (run / name).read_bytes() for name in kept}
    again = cli(*QUICK, "task=mrpc", f"hydra.run.dir={run}", cwd=ROOT)
    assert again.returncode == 2
    assert "already holds a finished run" in again.stderr + again.stdout
    assert before == {name: (run / name).read_bytes() for name in before}

    # eval_only reloads the adapter and reproduces the final eval metrics
    evaluated = tmp_path / "eval"
    proc = cli(
        "eval_only=true",
        f"load_from={run}",
        f"hydra.run.dir={evaluated}",
        "model=tiny_bert",
        "task.max_eval_samples=24",
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    reloaded = json.loads((evaluated / "eval_results.json").read_text())
    assert reloaded["task"] == "mrpc" and reloaded["method"] == "lora"
    assert reloaded["metric_units"] == results["metric_units"]
    for key, value in results["final_eval"].items():
        assert reloaded["eval"][key] == pytest.approx(value, abs=1e-6), key


def test_cli_multirun_one_dir_per_job(tmp_path):
    proc = cli(
        "-m",
        *QUICK,
        "method=lora,head",
        "task=rte,mrpc",
        "seed=1,2",
        f"hydra.sweep.dir={tmp_path}",
        "schedule.max_steps=2",
        "save_adapter=false",
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = sorted(p.parent.name for p in tmp_path.glob("*/results.json"))
    assert len(done) == 8
    assert "0_lora_rte_seed1" in done and "7_head_mrpc_seed2" in done
    for path in tmp_path.glob("*/results.json"):
        assert json.loads(path.read_text())["status"] == "completed"
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("| completed |") == 8 and "8 jobs, 8 completed, 0 not completed" in summary


def test_cli_multirun_failed_job_does_not_stop_the_others(tmp_path):
    proc = cli(
        "-m",
        *QUICK,
        "method=lora",
        "method.rank=4,4096",  # the second job's rank is larger than the layers
        "task=rte,mrpc",
        f"hydra.sweep.dir={tmp_path}",
        "schedule.max_steps=2",
        "save_adapter=false",
        cwd=ROOT,
    )
    assert proc.returncode == 1  # the sweep ran to the end, then said that jobs failed
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [(r["task"], r["status"]) for r in rows] == [
        ("rte", "completed"),
        ("mrpc", "completed"),
        ("rte", "failed"),
        ("mrpc", "failed"),
    ]
    assert all("rank=4096 is not allowed" in r["error"] for r in rows if r["status"] == "failed")
    assert "rank=4096 is not allowed" in (tmp_path / "summary.md").read_text()
    assert all(r["value"] for r in rows if r["status"] == "completed")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method=nosuch", "unknown method 'nosuch'; available: "),
        ("model=nosuch", "unknown model 'nosuch'; available: "),
        ("method.rank=4096", "rank=4096 is not allowed for layer"),
    ],
)
def test_cli_bad_input_is_one_clear_error(tmp_path, override, message):
    proc = cli(*QUICK, override, f"hydra.run.dir={tmp_path}", cwd=ROOT)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_unknown_task_is_refused_by_the_registry(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.task.name = "nosuch"
    with pytest.raises(ConfigError, match="unknown task 'nosuch'; available: alpaca, boolq, caltech101, cb"):
        run_experiment(cfg)


def test_saved_adapter_reloads_to_identical_predictions(tmp_path):
    cfg = tiny_config(tmp_path / "train", "task=rte")
    run_experiment(cfg)
    from peftlab.methods.base import build_method
    from peftlab.models import build_model
    from peftlab.run.artifacts import load_adapter

    def fresh(seed: int) -> SequenceClassifier:
        torch.manual_seed(seed)
        model, _ = build_model(cfg.model, 2)
        return model

    batch = {
        "input_ids": torch.randint(1000, 2000, (3, 12)),
        "attention_mask": torch.ones(3, 12, dtype=torch.long),
    }
    # the trained model, as the run left it, is rebuilt from its seed + adapter
    torch.manual_seed(cfg.seed)
    model, _ = build_model(cfg.model, 2)
    method = build_method(cfg.method)
    method.setup(model)
    load_adapter(model, method, tmp_path / "train")
    model.eval()
    reloaded = model(**batch).logits
    # the same base without the adapter predicts differently (the adapter and head carry training)
    plain = fresh(cfg.seed).eval()
    assert not torch.allclose(plain(**batch).logits, reloaded)
    # reloading twice is deterministic and identical
    torch.manual_seed(cfg.seed)
    again, _ = build_model(cfg.model, 2)
    method = build_method(cfg.method)
    method.setup(again)
    load_adapter(again, method, tmp_path / "train")
    assert torch.equal(again.eval()(**batch).logits, reloaded)


def test_nan_loss_stops_and_keeps_what_was_written(tmp_path, monkeypatch):
    original = SequenceClassifier.forward
    calls = {"n": 0}

    def nan_after_two_steps(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 2:
                return ModelOutput(logits=out.logits, loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(SequenceClassifier, "forward", nan_after_two_steps)
    cfg = tiny_config(tmp_path, "schedule.max_steps=6")
    with pytest.raises(TrainingDiverged, match="train loss is nan over steps 3..4"):
        run_experiment(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 2 and rows[0]["train_loss"] > 0  # the healthy steps are kept
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and "nan" in results["error"]
    assert not (tmp_path / "adapter.safetensors").exists()


def test_wandb_logger_writes_an_offline_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    results = run_experiment(tiny_config(tmp_path, "logger=wandb", "save_adapter=false"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    events = list(runs[0].glob("run-*.wandb"))
    assert len(events) == 1, "no W&B event file"
    # the event log (protobuf records) holds the resolved config, the metric rows and the summary
    data = events[0].read_bytes()
    for needle in (b"tiny_bert", b"train_loss", b"eval_accuracy", b"median_step_time_s"):
        assert needle in data, needle
    assert results["status"] == "completed"


def test_wandb_sweep_jobs_share_a_group_and_upload_figures(tmp_path):
    proc = cli(
        "-m",
        *QUICK,
        "logger=wandb",
        "method=aflora",  # writes freeze_heatmap.png
        "seed=1,2",
        "schedule.max_steps=4",
        f"hydra.sweep.dir={tmp_path / 'sweep7'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted(tmp_path.glob("sweep7/*/wandb/offline-run-*"))
    assert len(runs) == 2
    for run in runs:
        data = next(run.glob("run-*.wandb")).read_bytes()
        assert b"sweep7" in data and b"aflora/rte/seed" in data  # group and run name
        assert list(run.glob("files/media/images/figures/freeze_heatmap*.png")), "figure not uploaded"


def test_eval_only_needs_no_training_data(tmp_path):
    run_experiment(tiny_config(tmp_path / "run", "task=rte"))
    only_dev = tmp_path / "data" / "glue" / "RTE"
    only_dev.mkdir(parents=True)
    (only_dev / "dev.tsv").symlink_to(Path(data_root_candidates(None)[0]) / "glue" / "RTE" / "dev.tsv")
    cfg = tiny_config(
        tmp_path / "eval",
        "eval_only=true",
        f"load_from={tmp_path / 'run'}",
        f"data_root={tmp_path / 'data'}",
        "task.hub_fallback=false",
    )
    results = run_experiment(cfg)
    assert results["train_examples"] == 0 and results["eval_examples"] == {"validation": 24}
    final = json.loads((tmp_path / "run" / "results.json").read_text())["final_eval"]
    assert results["eval"]["accuracy"] == final["accuracy"]


@pytest.mark.parametrize("method", ["lora", "spsft"])
def test_bf16_autocast_run_completes(tmp_path, method):
    results = run_experiment(tiny_config(tmp_path, f"method={method}", "schedule.precision=bf16"))
    assert results["status"] == "completed" and results["final_eval"]["loss"] > 0
    with pytest.raises(ConfigError, match="allowed: fp32, bf16, fp16"):
        run_experiment(tiny_config(tmp_path / "x", "schedule.precision=fp8"))


def test_bad_method_option_fails_before_the_run_folder_exists(tmp_path):
    """Hydra's job would create hydra.run.dir (and peftlab.log in it) before the run checks its method
    options: the CheckFirst callback refuses a bad value first, in one line, and leaves no folder."""
    folder = tmp_path / "X"
    proc = cli(*QUICK, "method=lora", "method.rank=0", f"hydra.run.dir={folder}", cwd=ROOT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert errors == ["error: method.rank=0 is not allowed; allowed: an integer >= 1"]
    assert "Traceback" not in output
    assert not folder.exists()


def test_cli_multirun_bad_method_option_fails_only_its_job(tmp_path):
    proc = cli(
        "-m",
        *QUICK,
        "method=lora",
        "method.rank=4,0",
        f"hydra.sweep.dir={tmp_path}",
        "schedule.max_steps=2",
        "save_adapter=false",
        "curves=false",
        cwd=ROOT,
    )
    assert proc.returncode == 1
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["completed", "failed"]
    assert "method.rank=0 is not allowed" in rows[1]["error"]
    failure = json.loads(next(tmp_path.glob("1_*/failure.json")).read_text())
    assert "method.rank=0 is not allowed" in json.dumps(failure)
