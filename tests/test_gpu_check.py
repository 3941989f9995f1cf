"""The GPU check (scripts/gpu_check.sh): its CPU dry-run passes every check and reports each one (the
torchrun ones skipped with the reason); a failing check becomes a report line with its error, not a stop;
a non-finite loss or a resumed run that differs is a failure; --device cuda without CUDA stops at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fnmatch import fnmatchcase

import pytest
import torch
from conftest import ROOT

from peftlab.reporting import gpu_check
from peftlab.reporting.gpu_check import CheckFailed, Options


def script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


def expected_checks() -> list[str]:
    """What the CPU dry-run must check: every method in fp32, the script's two in bf16, the torchrun pair
    (skipped on CPU), the three efficiency tables and the zero-shot run."""
    methods = gpu_check.method_names()
    expected = [f"train {m} fp32" for m in methods] + ["train lora bf16", "train aflora bf16"]
    expected += ["torchrun ddp lora", "torchrun ddp aflora", "zero-shot tiny_llama bf16"]
    return expected + [f"efficiency table {t}" for t in ("aflora", "light-peft", "spsft")]


def test_the_dry_run_plans_every_check_and_only_selects():
    listed = script("--device", "cpu", "--quick", "--list")
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.split("\n")[:-1]) == sorted(expected_checks())
    picked = script("--device", "cpu", "--quick", "--list", "--only", "train lora*", "--only", "zero-shot*")
    wanted = [n for n in expected_checks() if fnmatchcase(n, "train lora*") or n.startswith("zero-shot")]
    assert "train lora bf16" in wanted and "train lora_llm fp32" in wanted
    assert sorted(picked.stdout.split("\n")[:-1]) == sorted(wanted)
    bad = script("--device", "cpu", "--quick", "--only", "train lorra*")
    assert bad.returncode == 2 and "--only 'train lorra*' matches no check" in bad.stderr


@pytest.mark.slow  # one check a test (a method trained and resumed, a table, a zero-shot run): 5-40 s each
@pytest.mark.parametrize("name", expected_checks())
def test_cpu_dry_run_passes_each_check_and_reports_it(tmp_path, name):
    proc = script("--device", "cpu", "--quick", "--out", str(tmp_path), "--only", name)
    assert (tmp_path / "gpu_check.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    [check] = report["checks"]
    assert check["name"] == name
    if name.startswith("torchrun"):
        assert check["status"] == "skip" and "needs 2 visible GPUs" in check["detail"], check
    else:
        assert check["status"] == "pass", check
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if name.startswith("train") and name.endswith("fp32"):
        assert "identical" in check["detail"], check
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert f"| {name} | {check['status']} |" in markdown
    assert f"torch: {torch.__version__}" in markdown and "device_name:" in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_stops_at_once_with_one_line(tmp_path):
    proc = script("--out", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA device" in proc.stderr
    assert not (tmp_path / "gpu_check.md").exists()


def options(tmp_path) -> Options:
    return Options("cpu", tmp_path, True, 1, None, ["x"], ["x"], ["t"], {})


def test_a_failing_check_is_a_report_line_and_the_others_still_run(tmp_path):
    def boom():
        raise CheckFailed("exit 2: schedule.lr=-1 is out of range")

    def broken():
        raise KeyError("loss")

    checks = [
        gpu_check.timed("a", boom),
        gpu_check.timed("b", broken),
        gpu_check.timed("c", lambda: ("fine", 12.5)),
    ]
    assert [c.status for c in checks] == ["fail", "fail", "pass"]
    report = gpu_check.write_report(checks, {"device": "cpu"}, options(tmp_path), 1.0).read_text()
    assert "| a | fail |" in report and "schedule.lr=-1 is out of range" in report
    assert "KeyError: 'loss'" in report and "| c | pass | 0.0 | 12.5 | fine |" in report
    log = "requests: 0%\rTraceback ...\nRuntimeError: dtypes differ\nSet HYDRA_FULL_ERROR=1\n\r 3/12 it/s"
    assert gpu_check.last_line(log) == "RuntimeError: dtypes differ"
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["counts"] == {"pass": 1, "fail": 2, "skip": 0}


def write_run(folder, losses, eval_loss=0.5):
    folder.mkdir(parents=True)
    rows = [{"step": i + 1, "train_loss": x, "step_time_s": 0.1 * i} for i, x in enumerate(losses)]
    rows.append({"step": len(losses), "eval_loss": eval_loss})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "results.json").write_text(json.dumps({"final_eval": {"loss": eval_loss}}))


def test_a_non_finite_loss_fails_and_timings_are_not_compared(tmp_path):
    write_run(tmp_path / "ok", [0.7, 0.6])
    assert gpu_check.finite_losses(tmp_path / "ok")["final_eval"] == {"loss": 0.5}
    write_run(tmp_path / "nan", [0.7, float("nan")])
    with pytest.raises(CheckFailed, match="1 non-finite of 4"):
        gpu_check.finite_losses(tmp_path / "nan")
    write_run(tmp_path / "other", [0.7, 0.6000001])
    rows = gpu_check.compared_rows(tmp_path / "ok", 1)
    assert rows == [{"step": 2, "train_loss": 0.6}, {"step": 2, "eval_loss": 0.5}]
    assert rows != gpu_check.compared_rows(tmp_path / "other", 1)


def test_the_stopped_copy_keeps_only_the_checkpoints_before_the_last_step(tmp_path):
    write_run(tmp_path / "full", [0.7, 0.6])
    (tmp_path / "full" / "checkpoints").mkdir()
    for step in (5, 10, 15):
        (tmp_path / "full" / "checkpoints" / f"step_{step:07d}.pt").write_bytes(b"")
    assert gpu_check.stopped_copy(tmp_path / "full", tmp_path / "stopped", 15) == 10
    assert not (tmp_path / "stopped" / "results.json").exists()
    assert sorted(p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir()) == [
        "step_0000005.pt",
        "step_0000010.pt",
    ]
    with pytest.raises(CheckFailed, match="no checkpoint before step 5"):
        gpu_check.stopped_copy(tmp_path / "full", tmp_path / "again", 5)


def test_zero_shot_check_passes_with_bf16_base_weights_and_fp32_lora(tmp_path):
    """The harness's forwards run in the evaluation's autocast (else fp32 LoRA meets bf16 weights)."""
    detail, peak = gpu_check.check_zero_shot(options(tmp_path))
    assert "zero_shot/acc" in detail and "arc_easy/acc" in detail and peak > 0
