"""(IA)^3 against huggingface peft's IA3 (peft/tuners/ia3/layer.py): same outputs, vector gradients and
merged weights from the same base and vectors; step 0 is the base model; a CLI run on tiny_bert saves,
reloads (eval_only) and exports (--to peft, --to merged) to the same outputs; it trains on Llama's layout."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import cli, tiny_config
from omegaconf import OmegaConf
from peft import IA3Config, PeftModel, get_peft_model
from test_export import export_beside_ours, fresh_base, logits_from
from transformers import AutoModel

from peftlab.blocks.protocol import adapter_layers, fold_adapters, merge_adapters, unmerge_adapters
from peftlab.errors import ConfigError
from peftlab.methods.base import build_method
from peftlab.methods.ia3.layer import Ia3Linear
from peftlab.run.experiment import run_experiment


def ia3(**options):
    return build_method(OmegaConf.create({"name": "ia3", **options}))


def with_peft_beside(model):
    """peftlab's IA3 on ``model`` and peft's IA3 on a copy of its backbone, with the same random vectors
    (not ones: equal outputs then say something) on the same explicit full module names."""
    base = copy.deepcopy(model.backbone)
    ia3().setup(model)
    layers = adapter_layers(model.backbone)
    config = IA3Config(
        target_modules=[name for name, _ in layers],
        feedforward_modules=[name for name, layer in layers if layer.feedforward],
    )
    theirs = get_peft_model(base, config).eval()
    torch.manual_seed(3)
    pairs = []
    for name, layer in layers:
        vector = theirs.base_model.model.get_submodule(name).ia3_l["default"]
        with torch.no_grad():
            layer.ia3_l.uniform_(0.5, 1.5)
            vector.copy_(layer.ia3_l.reshape(vector.shape))
        pairs.append((name, layer, vector))
    return theirs, pairs


def test_outputs_gradients_and_merged_weights_equal_peft(tiny_model, batch):
    model, _ = tiny_model
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    theirs, pairs = with_peft_beside(model)
    assert [name.rsplit(".", 2)[-2:] for name, _, _ in pairs[:3]] == [
        ["self", "key"],
        ["self", "value"],
        ["output", "dense"],
    ]  # keys, values, and the FFN's down projection (not attention.output.dense), input-scaled
    assert [layer.feedforward for _, layer, _ in pairs[:3]] == [False, False, True]
    ours_out = model.backbone(**inputs).last_hidden_state
    theirs_out = theirs(**inputs).last_hidden_state
    torch.testing.assert_close(ours_out, theirs_out, rtol=0, atol=1e-6)
    weights = torch.randn_like(ours_out)
    (ours_out * weights).sum().backward()
    (theirs_out * weights).sum().backward()
    grad_diff = max((ly.ia3_l.grad - v.grad.flatten()).abs().max().item() for _, ly, v in pairs)
    assert grad_diff <= 1e-5 and all(ly.ia3_l.grad.abs().sum() > 0 for _, ly, _ in pairs)
    merged = theirs.merge_and_unload()
    fold_adapters(model.backbone)
    ours_state, theirs_state = model.backbone.state_dict(), merged.state_dict()
    assert ours_state.keys() == theirs_state.keys()
    for key, value in ours_state.items():
        torch.testing.assert_close(value, theirs_state[key], rtol=0, atol=1e-6, msg=key)


def test_step0_is_the_base_model_and_only_vectors_and_head_train(tiny_model, batch):
    model, _ = tiny_model
    before = model(**batch).logits
    ia3().setup(model)
    assert torch.equal(model(**batch).logits, before)
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert all(name.endswith(".ia3_l") or name.startswith("head.") for name in trained)
    assert sum(name.endswith(".ia3_l") for name in trained) == 2 * 3


def test_merge_unmerge_round_trip_and_a_zero_entry_refuses(tiny_model, batch):
    model, _ = tiny_model
    ia3().setup(model)
    torch.manual_seed(0)
    for _, layer in adapter_layers(model):
        torch.nn.init.uniform_(layer.ia3_l, 0.5, 1.5)
    unmerged = model(**batch).logits
    merge_adapters(model)
    torch.testing.assert_close(model(**batch).logits, unmerged, rtol=1e-5, atol=1e-6)
    unmerge_adapters(model)
    torch.testing.assert_close(model(**batch).logits, unmerged, rtol=1e-5, atol=1e-6)
    layer = adapter_layers(model)[0][1]
    with torch.no_grad():
        layer.ia3_l[0] = 0.0
    layer.merge()
    with pytest.raises(ConfigError, match="zero entry cannot be unmerged"):
        layer.unmerge()


def test_targets_fail_loudly(tiny_model):
    model, _ = tiny_model
    with pytest.raises(ConfigError, match=r"target_modules \['nope'\] match no layer"):
        ia3(target_modules=["nope"]).setup(model)
    with pytest.raises(ConfigError, match="ia3 has no target"):
        ia3(target_modules=[], feedforward_modules=None)
    layer = Ia3Linear(torch.nn.Linear(4, 3), feedforward=True)
    assert layer.ia3_l.shape == (4,) and torch.equal(layer.ia3_l, torch.ones(4))


QUICK = ["model=tiny_bert", "task=rte", "schedule=quick", "task.max_train_samples=32"]
QUICK += ["task.max_eval_samples=24", "progress_bar=false", "curves=false", "measure.flops=false"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``python -m peftlab method=ia3`` in a subprocess: 4 steps at a high LR, so the vectors move."""
    run = tmp_path_factory.mktemp("ia3") / "run"
    proc = cli("method=ia3", *QUICK, "schedule.max_steps=4", "schedule.lr=0.02", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


def test_cli_run_completes_and_eval_only_reproduces_it(cli_run, tmp_path):
    results = json.loads((cli_run / "results.json").read_text())
    assert results["status"] == "completed" and results["steps"] == 4
    evaluated = tmp_path / "eval"
    proc = cli("eval_only=true", f"load_from={cli_run}", f"hydra.run.dir={evaluated}", *QUICK[:1], QUICK[4])
    assert proc.returncode == 0, proc.stderr[-2000:]
    reloaded = json.loads((evaluated / "eval_results.json").read_text())
    assert reloaded["method"] == "ia3"
    for key, value in results["final_eval"].items():
        assert reloaded["eval"][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_peft_export_loads_in_peft_with_the_same_logits(cli_run, tmp_path):
    folder, run, inputs, ours = export_beside_ours(cli_run, "peft", tmp_path / "peft")
    base = fresh_base(run)
    before = logits_from(base, folder, inputs)
    theirs = logits_from(PeftModel.from_pretrained(base, str(folder)).eval(), folder, inputs)
    assert not torch.allclose(before, ours, atol=1e-4)  # the trained vectors change the outputs
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "IA3"
    assert set(config["feedforward_modules"]) == {f"encoder.layer.{i}.output.dense" for i in range(2)}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_merged_export_reloads_with_the_same_logits(cli_run, tmp_path):
    folder, _, inputs, ours = export_beside_ours(cli_run, "merged", tmp_path / "merged")
    loaded = AutoModel.from_pretrained(str(folder)).eval()
    torch.testing.assert_close(logits_from(loaded, folder, inputs), ours, rtol=1e-4, atol=1e-5)


def test_trains_on_the_llama_layout(tmp_path):
    overrides = [
        "model=tiny_llama",
        "task=alpaca",
        "method=ia3",
        "schedule.max_steps=2",
        "measure.flops=false",
    ]
    overrides += ["task.max_train_samples=8", "task.max_eval_samples=2", "task.max_new_tokens=2"]
    overrides += ["task.max_prompt_tokens=64", "task.max_target_tokens=16", "schedule.lr=0.05"]
    results = run_experiment(tiny_config(tmp_path / "run", *overrides))
    assert results["status"] == "completed" and results["steps"] == 2
    from peftlab.export import rebuild

    layers = adapter_layers(rebuild(tmp_path / "run").model)
    leaves = [(name.rsplit(".", 1)[-1], layer.feedforward) for name, layer in layers]
    assert leaves[:3] == [("k_proj", False), ("v_proj", False), ("down_proj", True)]
    assert all(not torch.equal(layer.ia3_l, torch.ones_like(layer.ia3_l)) for _, layer in layers)
