"""A config, data or run-folder mistake Hydra or the OS would report raw (a key in the wrong group, an
unknown preset, an unreadable data file, a foreign file where a run writes) ends in one line that says
what to do."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import cli, tiny_config

from peftlab.config import check_config
from peftlab.errors import ConfigError
from peftlab.reporting.sweep import record_failure
from peftlab.run.build import make_task
from peftlab.run.experiment import run_experiment
from peftlab.run.names import EVAL_RESULTS, FAILURE

BASE = ("method=lora", "task=rte", "model=tiny_bert")


def one_line_error(result) -> str:
    """The single error line of a refused command (exit 2, no traceback, no Hydra trailer)."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and "HYDRA_FULL_ERROR" not in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("override", "holder"),
    [("task.max_seq_length=64", "schedule"), ("schedule.rank=4", "method (")],
)
def test_a_key_in_the_wrong_group_names_the_group_that_holds_it(tmp_path, override, holder):
    line = one_line_error(cli(*BASE, override, f"hydra.run.dir={tmp_path / 'run'}"))
    group, key = override.split("=")[0].split(".")
    assert line.startswith(f"error: {group} has no key '{key}': it is in {holder}"), line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("group", ["method", "model", "task"])
def test_an_unknown_preset_lists_the_choices(tmp_path, group):
    line = one_line_error(cli(*BASE, f"{group}=nosuch", f"hydra.run.dir={tmp_path / 'run'}"))
    assert line.startswith(f"error: unknown {group} 'nosuch'; available: "), line
    preset = {"method": "lora", "model": "tiny_bert", "task": "rte"}[group]
    assert preset in line.split("available: ")[1].split(", "), line


def test_an_unknown_preset_in_a_sweep_is_one_line(tmp_path):
    line = one_line_error(cli("-m", *BASE, "method=lora,nosuch", f"hydra.sweep.dir={tmp_path / 'sweep'}"))
    assert "unknown method 'nosuch'; available: " in line and ", lora," in line


@pytest.mark.parametrize(
    "error", [PermissionError(13, "Permission denied"), IsADirectoryError(21, "Is a directory")]
)
def test_an_unreadable_data_file_is_one_line_naming_it(tmp_path, monkeypatch, error):
    opened = Path.open

    def refuse_train(path, *args, **kwargs):
        if path.name == "train.tsv":
            raise type(error)(error.errno, error.strerror, str(path))
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse_train)
    cfg = tiny_config(tmp_path)
    task = make_task(check_config(cfg))
    with pytest.raises(ConfigError, match=rf"task rte: cannot read \S+/RTE/train.tsv: {error.strerror}$"):
        task.load_split("train")


def test_eval_only_refuses_a_foreign_eval_results_json(tmp_path):
    run_experiment(tiny_config(tmp_path / "run", "schedule.max_steps=2", "measure.flops=false"))
    target = tmp_path / "eval"
    target.mkdir()
    (target / EVAL_RESULTS).write_text("mine\n")
    with pytest.raises(ConfigError, match=rf"holds {EVAL_RESULTS}, which no peftlab run recorded"):
        run_experiment(tiny_config(target, "eval_only=true", f"load_from={tmp_path / 'run'}"))
    assert (target / EVAL_RESULTS).read_text() == "mine\n"
    again = tmp_path / "eval2"
    for _ in range(2):  # its own eval_results.json, recorded: replaced
        evaluated = run_experiment(tiny_config(again, "eval_only=true", f"load_from={tmp_path / 'run'}"))
    assert json.loads((again / EVAL_RESULTS).read_text())["eval"] == evaluated["eval"]


def test_a_failed_sweep_job_keeps_a_foreign_failure_json(tmp_path):
    cfg = tiny_config(tmp_path)
    (tmp_path / FAILURE).write_text("another tool's\n")
    assert not record_failure(tmp_path, cfg, RuntimeError("boom"))
    assert (tmp_path / FAILURE).read_text() == "another tool's\n"
    fresh = tmp_path / "job"
    assert record_failure(fresh, cfg, RuntimeError("boom"))
    assert record_failure(fresh, cfg, RuntimeError("again"))  # its own, recorded: replaced
    assert json.loads((fresh / FAILURE).read_text())["error"] == "again"


def test_the_training_log_shows_the_warmup_used(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="peftlab")
    one_step = ("schedule.max_steps=1", "schedule.warmup_ratio=1.0", "measure.flops=false")
    run_experiment(tiny_config(tmp_path, *one_step))
    assert "training 1 steps (" in caplog.text and "warmup 0)" in caplog.text, caplog.text


@pytest.mark.parametrize("peft_type", ["LORA", "ADALORA"])
@pytest.mark.parametrize("alpha", ["0", "-16"])
def test_a_zero_or_negative_peft_lora_alpha_is_refused(tmp_path, peft_type, alpha):
    overrides = ("method=peft", f"method.peft_type={peft_type}", f"method.config={{lora_alpha: {alpha}}}")
    message = rf"method.config.lora_alpha={alpha} is not allowed; allowed: a finite number > 0"
    with pytest.raises(ConfigError, match=message):
        check_config(tiny_config(tmp_path, *overrides))
