"""Values that would make a run do nothing, or crash later, are refused in one line before any work: a
zero or negative LoRA alpha, a seed no RNG takes; a warmup never covers every step; exports keep the
umask's file mode."""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import tiny_config

from peftlab.config import check_config
from peftlab.errors import ConfigError
from peftlab.export import export
from peftlab.run.experiment import run_experiment
from peftlab.run.lock import file_mode
from peftlab.train.optim import lr_factor


@pytest.mark.parametrize("seed", [2**70, 2**32, -1])
def test_a_seed_out_of_range_is_one_line_naming_the_range(tmp_path, seed):
    message = rf"seed={seed} is not allowed; allowed: an integer 0 <= seed <= 4294967295 \(2\*\*32 - 1"
    with pytest.raises(ConfigError, match=message):
        check_config(tiny_config(tmp_path, f"seed={seed}"))


def test_the_largest_seed_trains(tmp_path):
    run_experiment(tiny_config(tmp_path, "seed=4294967295", "schedule.max_steps=1", "measure.flops=false"))


@pytest.mark.parametrize("method", ["method=lora", "method=dora", "method=light_peft"])
@pytest.mark.parametrize("alpha", ["0", "-16", "0.0"])
def test_a_zero_or_negative_alpha_is_refused(tmp_path, method, alpha):
    key = "method.peft.alpha" if method == "method=light_peft" else "method.alpha"
    message = rf"method.alpha={alpha}\S* is not allowed; allowed: a finite number > 0"
    with pytest.raises(ConfigError, match=message):
        check_config(tiny_config(tmp_path, method, f"{key}={alpha}"))


def test_a_warmup_never_covers_every_step():
    assert lr_factor(0, total_steps=1, warmup_steps=1) == 1.0  # a 1-step run trains at the peak LR
    assert [lr_factor(s, 4, 4) for s in range(4)] == [0.0, 1 / 3, 2 / 3, 1.0]  # warmup_ratio=1.0
    assert [lr_factor(s, 10, 2) for s in range(3)] == [0.0, 0.5, 1.0]  # a shorter warmup as before


def test_one_step_with_a_full_warmup_trains_and_its_export_keeps_the_umask(tmp_path):
    run = tmp_path / "run"
    overrides = ["schedule.max_steps=1", "schedule.warmup_ratio=1.0", "measure.flops=false", "curves=false"]
    run_experiment(tiny_config(run, *overrides))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if "lr" in r] == [pytest.approx(5e-4)]  # schedule=default's lr, not 0
    old = os.umask(0o027)
    try:
        out = export(run, "peft", tmp_path / "peft")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes["adapter_model.safetensors"] == 0o640 == modes["head.safetensors"], modes
    assert file_mode() == 0o666 & ~old


def test_a_huge_malformed_row_is_cut_in_the_error(tmp_path):
    from peftlab.registry import TASKS
    from peftlab.tasks.generation import read_jsonl

    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True)
    huge = "x" * 1_000_000
    (folder / "train.tsv").write_text(f"index\tsentence1\tsentence2\tlabel\n0\ta\tb\t{huge}\n")
    task = TASKS.get("rte")(tiny_config(tmp_path).task, str(tmp_path))
    with pytest.raises(ConfigError, match=r"label 'x{199}\.\.\. \(1000002 chars\) is not one of") as err:
        task.load_split("train")
    assert len(str(err.value)) < 600  # the path, 200 chars of the value, the rest
    (tmp_path / "rows.jsonl").write_text(json.dumps({"prompt": ["y" * 1_000_000]}) + "\n")
    message = r"rows.jsonl:1: prompt is \[\"y{198}\.\.\. \(1000004 chars\)"
    with pytest.raises(ConfigError, match=message) as err:
        read_jsonl(tmp_path / "rows.jsonl", ("prompt",))
    assert len(str(err.value)) < 600  # the path, 200 chars of the value, the rest
