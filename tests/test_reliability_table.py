"""scripts/table.py counts seeds, not folders: runs that differ in anything but the seed (the model, a
learning rate) get rows of their own, and one configuration and seed found in several folders (a copied
folder) is counted once, with a warning naming the folders."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil

from conftest import tiny_config
from omegaconf import OmegaConf

from peftlab.reporting import runs_table


def job(root, name: str, score: float, *overrides: str) -> None:
    """A finished job folder: the config a run of ``overrides`` saves and a results.json scoring ``score``."""
    folder = root / name
    folder.mkdir(parents=True)
    OmegaConf.save(tiny_config(folder, "task=rte", "method=lora", *overrides), folder / "config.yaml")
    results = {
        "status": "completed",
        "main_metric": "accuracy",
        "final_eval": {"accuracy": score},
        "metric_units": {"accuracy": "fraction"},
        "trainable_params": {"mean_over_steps": 1e6},
        "train_time_s": 10,
    }
    (folder / "results.json").write_text(json.dumps(results))


def table(root) -> list[str]:
    return table_rows(root, "method.name")


def table_rows(root, *rows: str) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runs_table.main([str(root), "--rows", *rows])
    return out.getvalue().splitlines()


def cells(lines: list[str]) -> dict[str, str]:
    """Row label -> the rte cell."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    return {r[0]: r[2] for r in rows[1:]}


def test_two_models_with_one_seed_are_two_rows(tmp_path):
    job(tmp_path, "bert", 0.60, "model=tiny_bert", "seed=1")
    job(tmp_path, "opt", 0.70, "model=tiny_opt", "seed=1")
    assert cells(table(tmp_path)) == {
        "lora [model.name=tiny_bert]": "60.00 ± 0.00 (1)",
        "lora [model.name=tiny_opt]": "70.00 ± 0.00 (1)",
    }


def test_two_learning_rates_with_one_seed_are_two_rows_and_seeds_still_share_one(tmp_path):
    job(tmp_path, "0", 0.60, "schedule.lr=0.001", "seed=1")
    job(tmp_path, "1", 0.70, "schedule.lr=0.0001", "seed=1")
    job(tmp_path, "2", 0.80, "schedule.lr=0.0001", "seed=2")
    assert cells(table(tmp_path)) == {
        "lora [schedule.lr=0.0001]": "75.00 ± 7.07 (2)",
        "lora [schedule.lr=0.001]": "60.00 ± 0.00 (1)",
    }


def test_a_copied_folder_is_counted_once_with_a_warning(tmp_path, caplog):
    job(tmp_path, "run", 0.60, "seed=1")
    shutil.copytree(tmp_path / "run", tmp_path / "run_copy")
    job(tmp_path, "seed2", 0.70, "seed=2")
    with caplog.at_level(logging.WARNING, logger="peftlab.reporting.runs_table"):
        lines = table(tmp_path)
    assert cells(lines) == {"lora": "65.00 ± 7.07 (2)"}
    warned = [r.getMessage() for r in caplog.records if "counted once" in r.getMessage()]
    assert len(warned) == 1 and str(tmp_path / "run") in warned[0] and str(tmp_path / "run_copy") in warned[0]
    assert any(line.startswith("- counted once") and "run_copy" in line for line in lines)


def test_a_model_row_key_leaves_the_model_details_out(tmp_path):
    job(tmp_path, "bert", 0.60, "model=tiny_bert", "seed=1")
    job(tmp_path, "opt", 0.70, "model=tiny_opt", "seed=1")
    lines = table_rows(tmp_path, "method.name", "model.name")
    assert cells(lines) == {"lora / tiny_bert": "60.00 ± 0.00 (1)", "lora / tiny_opt": "70.00 ± 0.00 (1)"}
