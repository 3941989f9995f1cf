"""Every bad value is refused before any work, in one line: the key, the value, what is allowed; unknown
keys of the schedule and task groups are refused too (tests/test_config.py: every shipped config passes)."""

from __future__ import annotations

import pytest
from conftest import ROOT, TINY, cli

from peftlab.config import check_config, compose_config
from peftlab.errors import ConfigError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule.epochs=-1", "schedule.epochs=-1 is not allowed; allowed: an integer >= 0"),
        ("schedule.max_steps=-3", "schedule.max_steps=-3 is not allowed; allowed: an integer >= 1, or null"),
        ("schedule.lr=-1", "schedule.lr=-1.0 is not allowed; allowed: a finite number > 0"),
        ("schedule.lr=nan", "schedule.lr=nan is not allowed"),
        ("schedule.max_grad_norm=-1", "schedule.max_grad_norm=-1.0 is not allowed; allowed: a finite num"),
        ("schedule.batch_size=0", "schedule.batch_size=0 is not allowed; allowed: an integer >= 1"),
        ("schedule.log_every_steps=0", "schedule.log_every_steps=0 is not allowed"),
        ("schedule.warmup_ratio=1.5", "allowed: a finite number >= 0 and <= 1"),
        ("schedule.adam_betas=[0.9,1.5]", r"schedule.adam_betas\[1\]=1.5 is not allowed"),
        ("checkpoint.keep=0", "checkpoint.keep=0 is not allowed; allowed: an integer >= 1"),
        ("checkpoint.every_steps=0", "checkpoint.every_steps=0 is not allowed"),
        ("task.max_train_samples=-1", "task.max_train_samples=-1 is not allowed; allowed: an integer >= 1"),
        ("task.on_bad_row=ignore", "task.on_bad_row='ignore' is not allowed; allowed: error, skip"),
        ("seed=abc", "seed='abc' is not allowed; allowed: an integer"),
        ("overwrite=yes", "overwrite='yes' is not allowed; allowed: true, false"),
        ("model.dtype=float64", "model.dtype='float64' is not allowed; allowed: float32, bfloat16, float16"),
        ("schedule.micro_batch_size=0", "schedule.micro_batch_size=0 is not allowed"),
        ("model.head_dropout=1.0", "model.head_dropout=1.0 is not allowed"),
        ("load_from=/some/run", "load_from=/some/run is read only with eval_only=true"),
        ("+schedule.lrr=1", r"schedule: unknown option\(s\) \['lrr'\]; allowed: .*'lr'"),
        ("+task.foo=1", r"task rte: unknown option\(s\) \['foo'\]; allowed: .*'on_bad_row'"),
    ],
)
def test_bad_value_is_refused_naming_key_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config([override]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=gsm8k", "+task.on_bad_row=skip"], r"task gsm8k: unknown option\(s\) \['on_bad_row'\]"),
        (["task=gsm8k", "task.max_target_tokens=1"], "task.max_target_tokens=1 is not allowed"),
        (["task=cnn_dm", "task.eval_every_nth=1"], "task.eval_every_nth=1 is not allowed"),
        (["task=digits", "task.std=[1,0,1]"], r"task.std=\[1, 0, 1\] is not allowed; allowed: a list of 3"),
        (["task=caltech101", "task.train_fraction=1"], "task.train_fraction=1 is not allowed"),
    ],
)
def test_each_task_family_has_its_own_keys_and_ranges(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config(overrides))


def test_bad_value_stops_the_cli_before_any_work(tmp_path):
    proc = cli(*TINY, "schedule.epochs=-1", f"hydra.run.dir={tmp_path}", cwd=ROOT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert output.strip().endswith("error: schedule.epochs=-1 is not allowed; allowed: an integer >= 0")
    assert "Traceback" not in output
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / ".peftlab.lock").exists()
