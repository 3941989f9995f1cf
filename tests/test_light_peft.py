"""Light-PEFT in the loop: masks and PEFT scores decide exactly the configured numbers of heads, FFN
channels, modules and ranks; after pruning the optimizer holds only live parameters; a finished run
reloads (base model pruned again from the saved indices) to identical metrics; Llama-style models work."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from omegaconf import OmegaConf

from peftlab.errors import ConfigError
from peftlab.methods.base import build_method
from peftlab.methods.light_peft.method import MASKS, PRUNING_FILE, peft_layers
from peftlab.run.experiment import build_trainer, run_experiment
from peftlab.run.folder import RunDir


def test_prune_removes_exactly_the_lowest_scored_units(tiny_model):
    model, _ = tiny_model
    cfg = {"name": "light_peft", "peft": {"name": "lora", "rank": 4, "target_modules": "all-linear"}}
    method = build_method(OmegaConf.create({**cfg, "module_ratio": 0.5, "rank_ratio": 0.25}))
    method.setup(model)
    masks = method.masks
    layers = [name for name, _ in peft_layers(model)]
    assert len(layers) == 12
    with torch.no_grad():
        masks.head.copy_(torch.tensor([[0.9, 0.1, 0.8, 0.7], [0.2, 0.9, 0.9, 0.9]]))  # 4 heads per layer
        masks.ffn.copy_(torch.linspace(1, 0, 128).view(2, 64))  # layer 1 holds the 64 lowest
    # module scores: the first six layers score low; rank scores: rank 0 lowest everywhere
    method.scores.module_sums = {name: torch.tensor(float(i)) for i, name in enumerate(layers)}
    method.scores.rank_sums = {name: torch.tensor([0.0, 1.0, 2.0, 3.0]) + i for i, name in enumerate(layers)}
    method.scores.recorded_steps = 1
    method.prune(model)
    record = method.record
    assert record["heads"] == {"0": [0, 2, 3], "1": [1, 2, 3]}  # floor(4 / 3) = 1 head per layer
    kept_ffn = sum(len(v) for v in record["ffn_channels"].values())
    assert kept_ffn == 128 - 42 and len(record["ffn_channels"]["0"]) == 64  # floor(128 / 3) = 42 from layer 1
    assert record["removed_modules"] == sorted(layers[:6])  # floor(12 * 0.5) = 6 lowest modules
    # ranks: 6 kept modules (i = 6..11) score i + [0, 1, 2, 3]; floor(24 * 0.25) = 6 lowest go:
    # 6, 7, 7, 8, 8, 8 = ranks 0-2 of module 6, 0-1 of module 7, 0 of module 8
    assert record["ranks"] == {
        layers[6]: [3],
        layers[7]: [2, 3],
        layers[8]: [1, 2, 3],
        **{name: [0, 1, 2, 3] for name in layers[9:]},
    }
    assert not hasattr(model, MASKS) and method.masks is None
    for name, layer in peft_layers(model):
        assert name in record["ranks"] and layer.units == len(record["ranks"][name])


def test_optimizer_after_pruning_holds_only_live_parameters(tmp_path):
    cfg = tiny_config(tmp_path, "method=light_peft", "schedule.max_steps=6", "method.estimation_steps=null")
    trainer = build_trainer(cfg, RunDir(tmp_path))
    assert any(g["name"].startswith("head_masks") for g in trainer.optimizer.param_groups)
    for _ in range(3):
        batch = next(iter(trainer.train_loader))
        trainer.train_step(batch)
    assert trainer.method.record is not None  # pruned at step max(2, ceil(0.1 * 6)) = 2
    live = {id(p) for p in trainer.model.parameters() if p.requires_grad}
    in_optimizer = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in in_optimizer} == live
    assert all(id(p) in live for p in trainer.optimizer.state)
    assert all(s["exp_avg"].shape == p.shape for p, s in trainer.optimizer.state.items())
    assert not any(g["name"].startswith(("head_masks", "ffn_masks")) for g in trainer.optimizer.param_groups)


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_deberta", "tiny_llama", "tiny_opt"])
@pytest.mark.parametrize("method", ["light_peft", "light_peft_adapter"])
def test_run_prunes_reports_and_reloads(tmp_path, model, method):
    run = tmp_path / "run"
    overrides = [f"method={method}", f"model={model}", "schedule.max_steps=6", "method.head_ratio=0.5"]
    overrides.append("method.estimation_steps=null")  # a separate run of max(2, ceil(0.1 x 6)) = 2 steps
    results = run_experiment(tiny_config(run, *overrides))  # tiny_llama: 2 KV groups per layer, 1 goes
    report = results["method_report"]
    assert report["pruned"] and report["params_after"] < report["params_before"]
    assert (
        report["heads_kept"] < report["heads_total"]
        and report["ffn_channels_kept"] < report["ffn_channels_total"]
    )
    record = json.loads((run / PRUNING_FILE).read_text())
    assert record["step"] == 2 and (run / f"{MASKS}.safetensors").is_file()
    saved = json.loads((run / "adapter.json").read_text())["tensors"]
    assert not any(k.startswith(MASKS) for k in saved)
    reloaded = run_experiment(tiny_config(tmp_path / "eval", "eval_only=true", f"load_from={run}"))
    assert reloaded["eval"]["accuracy"] == results["final_eval"]["accuracy"]
    assert reloaded["eval"]["loss"] == pytest.approx(results["final_eval"]["loss"], abs=1e-6)


def test_bad_options_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="allowed: lora, adapter"):
        build_method(OmegaConf.create({"name": "light_peft", "peft": {"name": "spsft"}}))
    with pytest.raises(ConfigError, match="unknown option"):
        build_method(OmegaConf.create({"name": "light_peft", "peft": {"name": "lora", "bottleneck": 8}}))
    with pytest.raises(ConfigError, match="head_ratio=1"):
        build_method(OmegaConf.create({"name": "light_peft", "peft": {"name": "lora"}, "head_ratio": 1}))
