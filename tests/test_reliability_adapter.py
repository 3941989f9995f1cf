"""A saved adapter must hold every tensor the method expects: loading one without the head, a LoRA
factor or DoRA's magnitude (or with a tensor the model has not) is refused, naming the tensors, instead
of scoring fresh random values."""

from __future__ import annotations

import shutil

import pytest
from conftest import tiny_config
from safetensors.torch import load_file, save_file

from peftlab.errors import ConfigError
from peftlab.export import export
from peftlab.run.experiment import run_experiment

TRAIN = ["task=rte", "schedule.max_steps=2", "measure.flops=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished LoRA run and a finished DoRA run, made when a test first asks for them."""
    root = tmp_path_factory.mktemp("runs")
    made = {}

    def get(method: str):
        if method not in made:
            run_experiment(tiny_config(root / method, *TRAIN, f"method={method}"))
            made[method] = root / method
        return made[method]

    return get


def edited_copy(run, tmp_path, drop: str | None = None, add: str | None = None):
    """A copy of ``run`` whose adapter.safetensors lacks the tensors whose names contain ``drop`` (or
    holds one more, ``add``); returns the copy and the names dropped."""
    copy = tmp_path / "edited"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.lock", "checkpoints"))
    tensors = load_file(str(copy / "adapter.safetensors"))
    dropped = sorted(k for k in tensors if drop is not None and drop in k)[: 1 if drop != "head." else None]
    for name in dropped:
        del tensors[name]
    if add is not None:
        tensors[add] = next(iter(tensors.values())).clone()
    save_file(tensors, str(copy / "adapter.safetensors"))
    return copy, dropped


@pytest.mark.parametrize(
    ("method", "drop"), [("lora", "head."), ("lora", "lora_A"), ("lora", "lora_B"), ("dora", "magnitude")]
)
def test_eval_only_refuses_an_adapter_missing_tensors(runs, tmp_path, method, drop):
    copy, dropped = edited_copy(runs(method), tmp_path, drop=drop)
    assert dropped, f"no saved tensor of {method} has {drop!r} in its name"
    cfg = tiny_config(tmp_path / "eval", "eval_only=true", f"load_from={copy}")
    with pytest.raises(ConfigError, match="lacks") as err:
        run_experiment(cfg)
    assert str(copy) in str(err.value)
    assert all(name in str(err.value) for name in dropped[:5])
    with pytest.raises(ConfigError, match="lacks"):  # nor is it exported
        export(copy, "merged", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_an_unknown_saved_tensor_is_refused_by_name(runs, tmp_path):
    copy, _ = edited_copy(runs("lora"), tmp_path, add="backbone.no_such.weight")
    cfg = tiny_config(tmp_path / "eval", "eval_only=true", f"load_from={copy}")
    with pytest.raises(ConfigError, match=r"backbone\.no_such\.weight"):
        run_experiment(cfg)


def test_a_complete_adapter_still_loads(runs, tmp_path):
    copy, _ = edited_copy(runs("dora"), tmp_path)
    results = run_experiment(tiny_config(tmp_path / "eval", "eval_only=true", f"load_from={copy}"))
    assert results["eval"]["accuracy"] is not None
