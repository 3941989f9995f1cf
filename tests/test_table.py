"""scripts/table.py turns run folders into mean ± std over seeds, by hand-checkable numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"method:\n  name: {method}\ntask:\n  name: {task}\nseed: {seed}\n")
    if score is not None:
        metric = "matthews_correlation" if task == "cola" else "accuracy"
        results = {
            "status": "completed",
            "main_metric": metric,
            "final_eval": {metric: score},
            "best_eval": {metric: score + 0.1},
            "trainable_params": {"mean_over_steps": params, "mean_over_steps_without_head": params / 2},
            "train_time_s": secs,
        }
        (folder / "results.json").write_text(json.dumps(results))


def test_table_mean_std_params_and_missing_jobs(tmp_path):
    job(tmp_path, "0", "lora", "rte", 1, 0.60, 2e6, secs=10)
    job(tmp_path, "1", "lora", "rte", 2, 0.70, 2e6, secs=20)
    job(tmp_path, "2", "lora", "cola", 1, 0.50, 1e6, secs=30)
    job(tmp_path, "3", "aflora", "rte", 1, 0.65, 0.5e6)
    job(tmp_path, "4", "aflora", "cola", 1, None, 0.5e6)  # killed: no results.json
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "table.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0] == "| | #params | cola | rte | Avg | train s |"
    # lora: rte mean 65, sample std of (60, 70) = 7.07; cola 50 (one seed); avg (50 + 65) / 2 = 57.5
    # #params: mean over the row's jobs (2M, 2M, 1M) = 1.667M; train s: mean of (10, 20, 30) = 20
    assert "| lora | 1.667M | 50.00 ± 0.00 (1) | 65.00 ± 7.07 (2) | 57.50 | 20 |" in lines
    assert "| aflora | 0.500M |  | 65.00 ± 0.00 (1) |  | 10 |" in lines  # no average over a missing cell
    assert any(line.startswith("- not counted: 4: no results.json") for line in lines)


def test_table_best_evaluation_and_adapter_only_params(tmp_path):
    job(tmp_path, "0", "aflora", "rte", 1, 0.60, 2e6)
    job(tmp_path, "1", "aflora", "rte", 2, 0.70, 2e6)
    script = [sys.executable, str(ROOT / "scripts" / "table.py"), str(tmp_path), "--select", "best"]
    out = subprocess.run([*script, "--params", "adapter"], capture_output=True, text=True, check=True).stdout
    assert "| aflora | 1.000M | 75.00 ± 7.07 (2) | 75.00 | 10 |" in out.splitlines()  # best = final + 10
    assert "best dev metric" in out and "without the head" in out
