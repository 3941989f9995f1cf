"""Run folders you can trust: one owner at a time, nothing stale from an earlier run, whole files only,
a clear state after any stop (failed, interrupted, a kill in the middle of a save, a full disk)."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli, tiny_config
from omegaconf import OmegaConf

import peftlab.run.folder as run_dir_module
from peftlab.errors import ConfigError, TrainingDiverged
from peftlab.models.heads import ModelOutput, SequenceClassifier
from peftlab.registry import METHODS
from peftlab.run.experiment import run_experiment
from peftlab.run.folder import RunDir

COMMON = [
    "model=tiny_bert",
    "schedule=quick",
    "progress_bar=false",
    "task.max_train_samples=32",
    "task.max_eval_samples=16",
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
ENDLESS = ["schedule.max_steps=100000", "schedule.eval_every_steps=100000"]  # until it is stopped


def start(*args: str) -> subprocess.Popen:
    """``python -m peftlab ARGS`` in the background, its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "peftlab", *args],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 240
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[0][-2000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def steps_of(folder: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (folder / "checkpoints").glob("step_*.pt"))


def metric_rows(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "step_time_s"} for row in rows]


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


# -- one owner ---------------------------------------------------------------------------------------------
def test_second_run_into_an_owned_folder_is_refused_with_the_owner(tmp_path):
    run = tmp_path / "run"
    owner = start(*COMMON, *ENDLESS, f"hydra.run.dir={run}")
    try:
        wait_for(lambda: (run / "config.yaml").exists(), owner, "the owner saved its config")
        run_id = OmegaConf.load(run / "config.yaml").run_id
        hydra_record = {p.name: p.read_text() for p in (run / ".hydra").iterdir()}
        assert sorted(hydra_record) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
        assert "schedule.max_steps=100000" in hydra_record["overrides.yaml"]
        second = cli(*COMMON, "overwrite=true", f"hydra.run.dir={run}")
        output = second.stdout + second.stderr
        assert second.returncode == 2 and "Traceback" not in output
        assert f"output dir {run} is in use by another run (pid {owner.pid} on host " in output
        assert ", started 20" in output
        assert OmegaConf.load(run / "config.yaml").run_id == run_id  # overwrite=true cleared nothing
        assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == hydra_record  # nor rewrote
    finally:
        owner.kill()
        owner.communicate()
    folder = RunDir(run)  # a SIGKILLed owner holds nothing: the folder is free at once
    folder.lock()
    folder.unlock()


# -- nothing stale ---------------------------------------------------------------------------------------
def test_overwrite_deletes_everything_the_old_run_wrote(tmp_path):
    run_experiment(tiny_config(tmp_path, "method=aflora", "schedule.max_steps=8", "checkpoint.every_steps=2"))
    assert {"freeze_trace.json", "freeze_heatmap.png"} <= {p.name for p in tmp_path.iterdir()}
    assert steps_of(tmp_path) == [4, 6]
    for name in ("failure.json", "predictions_validation.jsonl"):  # as a sweep, a generation task write them
        RunDir(tmp_path).write_file(name, b"{}")
    for name in (".results.json.0badc0de.tmp", "notes.txt"):  # a save a kill cut short; the user's notes
        (tmp_path / name).write_text("{}")
    run_experiment(
        tiny_config(tmp_path, "overwrite=true", "seed=7", "schedule.max_steps=4", "checkpoint.every_steps=2")
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".peftlab-manifest.json",  # what the run wrote: what a later clear deletes
        ".peftlab.lock",
        "adapter.json",
        "adapter.safetensors",
        "checkpoints",
        "config.yaml",
        "metrics.jsonl",
        "notes.txt",  # not a run's file: left alone
        "results.json",
    ]
    run_id = OmegaConf.load(tmp_path / "config.yaml").run_id
    assert steps_of(tmp_path) == [2]  # the old run's higher steps are gone, the new run's kept
    checkpoint = torch.load(tmp_path / "checkpoints" / "step_0000002.pt", weights_only=False)
    assert checkpoint["run_id"] == run_id
    assert [row["step"] for row in metric_rows(tmp_path)] == [2, 4, 4]
    assert results(tmp_path)["seed"] == 7


@pytest.mark.parametrize("method", ["spsft", "light_peft"])
def test_every_file_a_run_writes_is_one_a_new_run_deletes(tmp_path, method):
    short = ["method.estimation_steps=null"] if method == "light_peft" else []  # not the authors' 800 steps
    cfg = tiny_config(
        tmp_path, f"method={method}", "schedule.max_steps=10", "checkpoint.every_steps=5", *short
    )
    run_experiment(cfg)
    assert all((tmp_path / name).exists() for name in METHODS.get(method).output_files)
    RunDir(tmp_path).clear_previous()
    assert [p.name for p in tmp_path.iterdir()] == [".peftlab.lock"]


def test_resume_uses_only_checkpoints_of_its_own_run(tmp_path, caplog):
    other, run = tmp_path / "other", tmp_path / "run"
    run_experiment(tiny_config(other, "schedule.max_steps=8", "checkpoint.every_steps=2"))
    expected = run_experiment(tiny_config(run, "seed=7", "schedule.max_steps=4", "checkpoint.every_steps=2"))
    shutil.copy(other / "checkpoints" / "step_0000006.pt", run / "checkpoints")  # newer, but not this run's
    (run / "results.json").unlink()  # as if killed after its last checkpoint
    resumed = run_experiment(tiny_config(run, "resume=true"))
    assert "step_0000006.pt belongs to run" in caplog.text
    assert resumed["seed"] == 7 and resumed["steps"] == 4
    assert resumed["final_eval"] == expected["final_eval"]


def test_new_run_into_an_unfinished_folder(tmp_path):
    run_experiment(tiny_config(tmp_path, "schedule.max_steps=6", "checkpoint.every_steps=2"))
    (tmp_path / "results.json").unlink()  # killed after its last checkpoint: resumable
    message = (
        rf"holds the checkpoints of an unfinished run \(status: killed\); continue it with "
        rf"resume={tmp_path}, or start again with overwrite=true"
    )
    with pytest.raises(ConfigError, match=message):
        run_experiment(tiny_config(tmp_path))
    shutil.rmtree(tmp_path / "checkpoints")  # killed before any checkpoint: nothing to resume
    run_experiment(tiny_config(tmp_path, "schedule.max_steps=4"))
    assert [row["step"] for row in metric_rows(tmp_path)] == [2, 4, 4]  # not appended to the old rows


def test_failed_overwrite_leaves_no_adapter_and_eval_only_refuses_the_folder(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run_experiment(tiny_config(run))
    original = SequenceClassifier.forward

    def nan_loss(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        return ModelOutput(logits=out.logits, loss=out.loss * float("nan")) if self.training else out

    monkeypatch.setattr(SequenceClassifier, "forward", nan_loss)
    with pytest.raises(TrainingDiverged):
        run_experiment(tiny_config(run, "overwrite=true"))
    monkeypatch.undo()
    assert results(run)["status"] == "failed"
    assert not (run / "adapter.safetensors").exists() and not (run / "adapter.json").exists()
    with pytest.raises(ConfigError, match=r"that run did not complete \(results.json status: failed\)"):
        run_experiment(tiny_config(tmp_path / "eval", "eval_only=true", f"load_from={run}"))


def test_fixed_sweep_rerun_with_overwrite_reports_its_jobs_completed(tmp_path):
    sweep = ["-m", *COMMON, "task=rte,mrpc", "schedule.max_steps=2", f"hydra.sweep.dir={tmp_path}"]
    broken = cli(*sweep, "method.rank=4096")
    assert broken.returncode == 1 and len(list(tmp_path.glob("*/failure.json"))) == 2
    fixed = cli(*sweep, "method.rank=4", "overwrite=true")
    assert fixed.returncode == 0, fixed.stdout[-2000:]
    assert not list(tmp_path.glob("*/failure.json"))
    assert "2 jobs, 2 completed, 0 not completed" in (tmp_path / "summary.md").read_text()
    for log in tmp_path.glob("*/peftlab.log"):  # the log holds this run's lines only
        assert "rank=4096" not in log.read_text()


# -- whole files -----------------------------------------------------------------------------------------
KILL_AT_RENAME = """
import os, signal, sys
target, rename = sys.argv[1], os.replace
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith(target):  # the worst moment: the temp file is written, not yet renamed
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(src, dst, *args, **kwargs)
os.replace = replace
sys.argv = ["peftlab", *sys.argv[2:]]
from peftlab.cli import main
main()
"""
STEP_2 = "checkpoints/step_0000002.pt"
CHECKPOINTED = [*COMMON, "schedule.max_steps=8", "checkpoint.every_steps=2", "schedule.eval_every_steps=4"]


def killed_while_saving(target: str, *args: str) -> None:
    command = [sys.executable, "-c", KILL_AT_RENAME, target, *args]
    proc = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("target", ["step_0000004.pt", "results.json"])
def test_kill_during_a_save_leaves_whole_files_and_the_run_resumes(tmp_path, target):
    killed_while_saving(target, *CHECKPOINTED, f"hydra.run.dir={tmp_path}")
    assert not (tmp_path / "results.json").exists()
    assert len(list(tmp_path.glob("**/.*.tmp"))) == 1  # the temp file of the interrupted save
    if target == "results.json":  # the adapter was saved before results.json: never used without it
        assert (tmp_path / "adapter.safetensors").exists()
        refused = cli("eval_only=true", f"load_from={tmp_path}", f"hydra.run.dir={tmp_path / 'eval'}")
        assert refused.returncode == 2 and "did not complete (results.json status: none)" in refused.stdout
    else:
        assert steps_of(tmp_path) == [2]
    resumed = cli("resume=true", f"hydra.run.dir={tmp_path}")
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert results(tmp_path)["status"] == "completed" and results(tmp_path)["steps"] == 8
    assert not list(tmp_path.glob("**/.*.tmp"))


def test_kill_while_resume_rewrites_the_metrics_loses_no_row(tmp_path):
    run_experiment(tiny_config(tmp_path, "schedule.max_steps=8", "checkpoint.every_steps=2"))
    expected = metric_rows(tmp_path)
    (tmp_path / "results.json").unlink()
    killed_while_saving("metrics.jsonl", "resume=true", f"hydra.run.dir={tmp_path}")
    assert metric_rows(tmp_path) == expected  # the old file stays whole until the new one replaces it
    resumed = cli("resume=true", f"hydra.run.dir={tmp_path}")
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert [row["step"] for row in metric_rows(tmp_path)] == [row["step"] for row in expected]


def test_files_are_fsynced_and_get_the_mode_of_the_umask(tmp_path, monkeypatch):
    synced: list[Path] = []
    fsync = run_dir_module.fsync_path
    monkeypatch.setattr(run_dir_module, "fsync_path", lambda path: (synced.append(Path(path)), fsync(path)))
    umask = os.umask(0o027)
    try:
        run_experiment(tiny_config(tmp_path, "schedule.max_steps=4", "checkpoint.every_steps=2"))
    finally:
        os.umask(umask)
    for name in ("results.json", "adapter.safetensors", "adapter.json", "config.yaml", STEP_2):
        path = tmp_path / name
        assert path.stat().st_mode & 0o777 == 0o640, name  # not mkstemp's / safetensors' 0600
        assert any(p.parent == path.parent and p.name.startswith(f".{path.name}.") for p in synced), name
    assert tmp_path in synced and tmp_path / "checkpoints" in synced  # the renames themselves
    assert (tmp_path / "metrics.jsonl").stat().st_mode & 0o777 == 0o640


def test_resume_falls_back_from_a_truncated_checkpoint(tmp_path, caplog):
    expected = run_experiment(tiny_config(tmp_path, "schedule.max_steps=8", "checkpoint.every_steps=2"))
    (tmp_path / "results.json").unlink()
    folder = tmp_path / "checkpoints"
    good = (folder / "step_0000004.pt").read_bytes()
    for name in ("step_0000004.pt", "step_0000006.pt"):
        (folder / name).write_bytes((folder / name).read_bytes()[:1000])
    with pytest.raises(ConfigError, match=r"no usable checkpoint of run \w+ in .*step_0000004.pt is unread"):
        run_experiment(tiny_config(tmp_path, "resume=true"))
    (folder / "step_0000004.pt").write_bytes(good)
    resumed = run_experiment(tiny_config(tmp_path, "resume=true"))
    assert "resume: step_0000006.pt is unreadable" in caplog.text
    assert resumed["steps"] == 8 and resumed["final_eval"] == expected["final_eval"]


@pytest.mark.parametrize(
    ("args", "name"),
    [(["checkpoint.every_steps=2"], STEP_2), ([], "adapter.safetensors")],
)
def test_failed_write_is_a_failed_run_naming_the_file(tmp_path, args, name):
    """A file-size limit below a checkpoint's / the adapter's size fails the write as a full disk does."""

    def limit_file_size() -> None:  # Python ignores SIGXFSZ: the write fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    proc = subprocess.run(
        [sys.executable, "-m", "peftlab", *COMMON, "method=fft", *args, f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output
    assert re.search(rf"error: could not write {tmp_path / name}: .*File too large", output)
    assert not (tmp_path / name).exists() and not list(tmp_path.glob("**/.*.tmp"))  # no partial file
    assert results(tmp_path)["status"] == "failed" and "File too large" in results(tmp_path)["error"]


# -- stopping with Ctrl-C --------------------------------------------------------------------------------
def test_ctrl_c_writes_interrupted_and_says_how_to_resume(tmp_path):
    proc = start(*COMMON, "schedule.max_steps=60", "checkpoint.every_steps=5", f"hydra.run.dir={tmp_path}")
    wait_for(lambda: steps_of(tmp_path) and steps_of(tmp_path)[-1] >= 10, proc, "a checkpoint")
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130
    assert f"interrupted; resume with: python -m peftlab resume={tmp_path}" in output
    assert "Traceback" not in output and len(output.splitlines()) < 40
    assert results(tmp_path)["status"] == "interrupted" and results(tmp_path)["steps"] < 60
    resumed = cli(f"resume={tmp_path}", f"hydra.run.dir={tmp_path.parent / 'resume_log'}")
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert results(tmp_path)["status"] == "completed" and results(tmp_path)["steps"] == 60


def test_ctrl_c_in_a_sweep_still_writes_the_summary(tmp_path):
    proc = start(
        "-m",
        *COMMON,
        "seed=1,2",
        *ENDLESS,
        f"hydra.sweep.dir={tmp_path}",
    )
    wait_for(lambda: list(tmp_path.glob("*/metrics.jsonl")), proc, "the first job trained")
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and "Traceback" not in output
    assert "sweep interrupted; summary of its 1 jobs so far" in output
    summary = (tmp_path / "summary.md").read_text()
    assert "| 0_lora_rte_seed1 | lora | rte | 1 | interrupted |" in summary


# -- eval_only on a damaged folder -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    run_experiment(tiny_config(folder))
    return folder


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "adapter.safetensors cannot be read, it is cut short or not safetensors"),
        ("garble", "adapter.safetensors cannot be read, it is cut short or not safetensors"),
        ("no_meta", r"no adapter.json there \(was the run finished with save_adapter=true\?\)"),
    ],
)
def test_eval_only_names_a_damaged_adapter_file(tmp_path, finished_run, damage, message):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    weights = run / "adapter.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "garble":
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header" + weights.read_bytes()[20:])
    else:
        (run / "adapter.json").unlink()
    with pytest.raises(ConfigError, match=rf"load_from={run}: {message}"):
        run_experiment(tiny_config(tmp_path / "eval", "eval_only=true", f"load_from={run}"))
