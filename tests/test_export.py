"""Export (``python -m peftlab.export``): a peft export loaded by huggingface peft on the same base, and a
merged export reloaded by transformers, compute what peftlab's model computes; methods peft cannot
express are refused with a pointer to ``--to merged``."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from peft import PeftModel
from transformers import AutoModel

from peftlab.errors import ConfigError
from peftlab.export import PRUNING_KEY, export, load_head, load_merged, main, rebuild
from peftlab.models import build_model
from peftlab.run.experiment import run_experiment, seed_everything

# a few steps at a high LR: the adapters move far enough from their init that a wrong export shows
RUNS = {
    "lora": ["method=lora", "method.target_modules=all-linear"],
    "rslora": ["method=lora", "method.rslora=true"],
    "dora": ["method=dora", "method.target_modules=all-linear"],
    "pissa": ["method=lora", "method.init=pissa"],
    "elora": ["method=elora", "method.rank=16"],
    "aflora": ["method=aflora"],
    "spsft": ["method=spsft", "method.importance_batches=1"],
    "fft": ["method=fft"],
    "head": ["method=head"],
    "light_peft": ["method=light_peft", "schedule.max_steps=4"],
    "adapter": ["method=adapter"],
    "peft": ["method=peft"],  # huggingface peft's LoRA: its own adapter folder, its own merge
}
PEFT = ["lora", "rslora", "dora", "pissa", "elora", "peft"]
NOT_PEFT = ["aflora", "spsft", "fft", "head", "light_peft", "adapter"]
MERGEABLE = ["lora", "dora", "pissa", "elora", "aflora", "spsft", "fft", "head", "light_peft", "peft"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One trained run per method, made when a test first asks for it."""
    root = tmp_path_factory.mktemp("runs")
    made = {}

    def get(name: str):
        if name not in made:
            overrides = ["task=rte", "schedule.max_steps=2", "schedule.lr=0.02", "measure.flops=false"]
            run_experiment(tiny_config(root / name, *overrides, *RUNS[name]))
            made[name] = root / name
        return made[name]

    return get


def batch(run):
    enc = run.processor(
        ["a small test sentence", "another one, a bit longer than the first"],
        ["paired text", "more"],
        padding=True,
        return_tensors="pt",
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def fresh_base(run):
    """The run's base backbone as a user would load it (a random base: rebuilt from the run's seed)."""
    seed_everything(run.cfg.seed)
    model, _ = build_model(run.cfg.model, 2)
    return model.backbone.eval()


@torch.no_grad()
def logits_from(backbone, folder, inputs):
    hidden = backbone(**inputs).last_hidden_state
    return load_head(folder)(hidden, inputs["attention_mask"])


def export_beside_ours(run_dir, fmt: str, out):
    """Export ``run_dir`` to ``out``; the rebuilt run, a batch of its inputs and peftlab's logits on it."""
    folder = export(run_dir, fmt, out)
    run = rebuild(run_dir)
    inputs = batch(run)
    with torch.no_grad():
        ours = run.model(**inputs).logits
    return folder, run, inputs, ours


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", PEFT)
def test_peft_export_loads_in_peft_with_the_same_outputs(runs, name, tmp_path):
    folder, run, inputs, ours = export_beside_ours(runs(name), "peft", tmp_path / "peft")
    base = fresh_base(run)
    before = logits_from(base, folder, inputs)
    loaded = PeftModel.from_pretrained(base, str(folder)).eval()
    theirs = logits_from(loaded, folder, inputs)
    assert not torch.allclose(before, ours, atol=1e-4)  # the adapter changes the outputs
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == ("VERA" if name == "elora" else "LORA")


@pytest.mark.parametrize("name", NOT_PEFT)
def test_methods_peft_cannot_express_point_to_merged(runs, name, tmp_path):
    with pytest.raises(
        ConfigError, match=rf"^method '{name}' has no huggingface peft form: .*--to merged only, because \w"
    ):
        export(runs(name), "peft", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", MERGEABLE)
def test_merged_export_reloads_in_transformers_with_the_same_outputs(runs, name, tmp_path):
    folder, _, inputs, ours = export_beside_ours(runs(name), "merged", tmp_path / "merged")
    config = json.loads((folder / "config.json").read_text())
    if name == "light_peft":  # pruned shapes: rebuilt from the recorded pruning
        assert PRUNING_KEY in config
        loaded = load_merged(folder)
        widths = [loaded.encoder.layer[i].intermediate.dense.out_features for i in range(2)]
        assert sum(widths) < 2 * config["intermediate_size"]
    else:
        assert PRUNING_KEY not in config
        loaded = AutoModel.from_pretrained(str(folder)).eval()
    torch.testing.assert_close(logits_from(loaded, folder, inputs), ours, rtol=1e-4, atol=1e-5)
    assert (folder / "tokenizer.json").exists()


def test_adapter_cannot_be_merged(runs, tmp_path):
    with pytest.raises(ConfigError, match="cannot be exported merged.*nonlinearity"):
        export(runs("adapter"), "merged", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_cli_default_folder_and_refusals(runs, tmp_path, capsys):
    run_dir = runs("lora")
    assert main([str(run_dir), "--to", "peft"]) == 0
    assert (run_dir / "export" / "peft" / "adapter_model.safetensors").exists()
    assert not list((run_dir / "export").glob(".*.tmp"))
    assert main([str(tmp_path), "--to", "merged"]) == 2
    assert "no config.yaml" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_causal_lm_exports_load_as_transformers_causal_lms(tmp_path):
    """A decoder's adapter goes onto AutoModelForCausalLM (keys under ``model.``); merged, the LM head
    comes along: both give peftlab's logits."""
    from transformers import AutoModelForCausalLM

    overrides = ["model=tiny_llama", "task=gsm8k", "method=lora", "method.target_modules=[q_proj,v_proj]"]
    overrides += ["schedule.max_steps=2", "schedule.lr=0.05", "measure.flops=false", "task.max_new_tokens=2"]
    overrides += ["task.max_prompt_tokens=32", "task.max_target_tokens=8"]
    run_experiment(tiny_config(tmp_path / "run", *overrides))
    peft_dir = export(tmp_path / "run", "peft")
    merged_dir = export(tmp_path / "run", "merged")
    run = rebuild(tmp_path / "run")
    inputs = run.processor(["Natalia sold clips to 48 of her friends"], return_tensors="pt")
    inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    with torch.no_grad():
        ours = run.model(**inputs).logits
        seed_everything(run.cfg.seed)
        base = build_model(run.cfg.model, 0, "lm")[0].transformers_model.eval()
        before = base(**inputs).logits
        theirs = PeftModel.from_pretrained(base, str(peft_dir)).eval()(**inputs).logits
        merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()(**inputs).logits
    assert not torch.allclose(before, ours, atol=1e-4)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(merged, ours, rtol=1e-4, atol=1e-5)
    assert json.loads((peft_dir / "export.json").read_text())["base_class"].endswith("ForCausalLM")
    assert not (peft_dir / "head.safetensors").exists()  # the LM head is the model's own
