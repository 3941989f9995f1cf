"""LoRA variants and initialisations checked against huggingface peft from the same weights: DoRA
(outputs, gradients, merge), PiSSA (factors, residual base, reload with the saved factors), ELoRA's shared
projections = peft's VeRA; DoRA and PiSSA under structural pruning compute what the masked model does."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from peft import LoraConfig, VeraConfig, get_peft_model, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from test_structure import mask_then_prune

from peftlab.blocks.lowrank import LowRankLinear, low_rank_layers
from peftlab.blocks.protocol import adapter_state_dict, merge_adapters
from peftlab.config import compose_config
from peftlab.errors import ConfigError
from peftlab.methods.base import build_method
from peftlab.models import build_model

TARGETS = {
    "tiny_bert": ["query", "value", "dense"],
    "tiny_llama": ["q_proj", "v_proj", "o_proj", "down_proj"],
}


def tiny(model_name: str):
    torch.manual_seed(0)
    model, tokenizer = build_model(compose_config([f"model={model_name}"]).model, num_labels=2)
    enc = tokenizer(["a short one", "a longer sentence with more words"], padding=True, return_tensors="pt")
    return model.eval(), {**enc, "labels": torch.tensor([0, 1])}


def lora(model, **options) -> None:
    build_method(OmegaConf.create({"name": "lora", "rank": 4, "alpha": 8, **options})).setup(model)


def peft_layer(root, name: str) -> LoraLayer:
    return root.get_submodule(name)


def randomize(model) -> None:
    """Trained-looking adapters: B != 0, magnitudes off their initial norms."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in low_rank_layers(model):
            a, b = layer.low_rank_pair()
            b.copy_(torch.randn(b.shape, generator=gen) * 0.2)
            a.add_(torch.randn(a.shape, generator=gen) * 0.05)
            if layer.variant is not None:
                magnitude = layer.variant.magnitude
                magnitude.mul_(1 + 0.2 * torch.rand(magnitude.shape, generator=gen))


@pytest.mark.parametrize("model_name", list(TARGETS))
def test_dora_equals_peft_outputs_gradients_and_merge(model_name):
    model, batch = tiny(model_name)
    ref = copy.deepcopy(model)
    lora(model, variant="dora", target_modules=TARGETS[model_name])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[model_name], use_dora=True)
    inject_adapter_in_model(config, ref.backbone)
    ref.head.requires_grad_(True)
    # step 0: DoRA with B = 0 is the base model, and peft's magnitude init is ours
    for name, layer in low_rank_layers(model):
        torch.testing.assert_close(
            layer.variant.magnitude, peft_layer(ref, name).lora_magnitude_vector["default"].weight
        )
    randomize(model)
    pairs = []
    with torch.no_grad():
        for name, layer in low_rank_layers(model):
            theirs = peft_layer(ref, name)
            a, b = layer.low_rank_pair()
            mine = (a, b, layer.variant.magnitude)
            peft_tensors = (
                theirs.lora_A["default"].weight,
                theirs.lora_B["default"].weight,
                theirs.lora_magnitude_vector["default"].weight,
            )
            for own, other in zip(mine, peft_tensors, strict=True):
                other.copy_(own)
            pairs.extend(zip(mine, peft_tensors, strict=True))
    ours, theirs = model(**batch), ref(**batch)
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=1e-5, atol=1e-6)
    ours.loss.backward()
    theirs.loss.backward()
    for own, other in pairs:
        torch.testing.assert_close(own.grad, other.grad, rtol=1e-4, atol=1e-6)
    # merged: the same weights as peft's merge, the same outputs as before
    merge_adapters(model)
    for module in ref.backbone.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    for name, layer in low_rank_layers(model):
        torch.testing.assert_close(
            layer.base_layer.weight, peft_layer(ref, name).base_layer.weight, rtol=1e-5, atol=1e-6
        )
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, ours.logits.detach(), rtol=1e-5, atol=1e-5)


def test_dora_unmerge_restores_the_base_and_saves_its_magnitude():
    model, batch = tiny("tiny_bert")
    lora(model, variant="dora", target_modules="all-linear")
    randomize(model)
    with torch.no_grad():
        before = model(**batch).logits
        weights = [layer.base_layer.weight.clone() for _, layer in low_rank_layers(model)]
        merge_adapters(model)
        for _, layer in low_rank_layers(model):
            layer.unmerge()
        torch.testing.assert_close(model(**batch).logits, before)
    for (_, layer), weight in zip(low_rank_layers(model), weights, strict=True):
        torch.testing.assert_close(layer.base_layer.weight, weight, rtol=1e-5, atol=1e-6)
    saved = adapter_state_dict(model)
    assert sum(k.endswith(".variant.magnitude") for k in saved) == len(low_rank_layers(model))
    with pytest.raises(ConfigError, match="unknown lora variant 'dorra'; available: dora"):
        lora(tiny("tiny_bert")[0], variant="dorra")


@pytest.mark.parametrize("model_name", list(TARGETS))
def test_pissa_equals_peft(model_name):
    model, batch = tiny(model_name)
    ref = copy.deepcopy(model)
    lora(model, init="pissa", target_modules=TARGETS[model_name])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[model_name], init_lora_weights="pissa")
    inject_adapter_in_model(config, ref.backbone)
    for name, layer in low_rank_layers(model):
        theirs = peft_layer(ref, name)
        a, b = layer.low_rank_pair()
        torch.testing.assert_close(a, theirs.lora_A["default"].weight)
        torch.testing.assert_close(b, theirs.lora_B["default"].weight)
        torch.testing.assert_close(layer.base_layer.weight, theirs.base_layer.weight)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, ref(**batch).logits, rtol=1e-5, atol=1e-5)


def test_pissa_reload_uses_the_saved_factors_not_a_new_svd():
    model, batch = tiny("tiny_bert")
    lora(model, init="pissa", target_modules="all-linear")
    randomize(model)
    saved = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    with torch.no_grad():
        trained = model(**batch).logits
    fresh, _ = tiny("tiny_bert")
    lora(fresh, init="pissa", target_modules="all-linear")
    # a different SVD (another library, device or dtype): factors and residual of the fresh model differ
    with torch.no_grad():
        for _, layer in low_rank_layers(fresh):
            shift = 1e-3 * torch.ones_like(layer.init_A)
            layer.base_layer.weight.sub_(layer.scale * layer.init_B @ shift)
            layer.init_A.add_(shift)
    build_method(OmegaConf.create({"name": "lora", "rank": 4, "alpha": 8})).load_adapter_state_dict(
        fresh, saved
    )
    for (_, mine), (_, other) in zip(low_rank_layers(model), low_rank_layers(fresh), strict=True):
        torch.testing.assert_close(other.base_layer.weight, mine.base_layer.weight, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, trained, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # inside peft
def test_elora_shared_projections_equal_peft_vera():
    model, batch = tiny("tiny_bert")
    ref = copy.deepcopy(model)
    targets = ["query", "value", "intermediate.dense"]
    build_method(OmegaConf.create({"name": "elora", "rank": 8, "target_modules": targets})).setup(model)
    config = VeraConfig(r=8, target_modules=targets, projection_prng_key=0, d_initial=0.1)
    get_peft_model(
        ref.backbone, config
    )  # VeRA's shared pair lives on the tuner; layers are injected in place
    layers = low_rank_layers(model)
    first = peft_layer(ref, layers[0][0])
    torch.testing.assert_close(layers[0][1].fixed.A, first.vera_A["default"], rtol=0, atol=0)
    torch.testing.assert_close(layers[0][1].fixed.B, first.vera_B["default"], rtol=0, atol=0)
    gen = torch.Generator().manual_seed(3)
    pairs = []
    with torch.no_grad():
        for name, layer in layers:
            theirs = peft_layer(ref, name)
            layer.vec_d.copy_(torch.rand(layer.vec_d.shape, generator=gen))
            layer.vec_b.copy_(torch.randn(layer.vec_b.shape, generator=gen))
            theirs.vera_lambda_d["default"].copy_(layer.vec_d)
            theirs.vera_lambda_b["default"].copy_(layer.vec_b)
            pairs += [
                (layer.vec_d, theirs.vera_lambda_d["default"]),
                (layer.vec_b, theirs.vera_lambda_b["default"]),
            ]
    ref.head.requires_grad_(True)
    ours, theirs = model(**batch), ref(**batch)
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=1e-5, atol=1e-6)
    ours.loss.backward()
    theirs.loss.backward()
    for own, other in pairs:
        torch.testing.assert_close(own.grad, other.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("options", [{"variant": "dora"}, {"init": "pissa"}], ids=["dora", "pissa"])
@pytest.mark.parametrize("model_name", ["tiny_bert", "tiny_llama"])
def test_variant_pruned_equals_masked(model_name, options):
    model, batch = tiny(model_name)
    batch.pop("labels")
    lora(model, target_modules="all-linear", **options)
    randomize(model)
    masked, unmasked, pruned, *_ = mask_then_prune(model, batch)
    assert not torch.allclose(masked, unmasked)
    torch.testing.assert_close(pruned, masked, rtol=1e-5, atol=1e-5)


def test_removing_a_pissa_module_restores_the_original_layer():
    torch.manual_seed(0)
    base = torch.nn.Linear(12, 10)
    original = base.weight.detach().clone()
    layer = LowRankLinear(base, rank=3, scale=2.0, init="pissa")
    assert not torch.allclose(layer.base_layer.weight, original)  # the base holds the residual
    torch.testing.assert_close(layer.removed().weight, original, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "overrides", [["method=dora"], ["method=lora", "method.init=pissa"]], ids=["dora", "pissa"]
)
def test_variant_run_reloads_to_identical_metrics(tmp_path, overrides):
    from conftest import tiny_config

    from peftlab.run.experiment import run_experiment

    trained = run_experiment(
        tiny_config(tmp_path / "run", "task=rte", "method.target_modules=all-linear", *overrides)
    )
    evaluated = run_experiment(
        tiny_config(tmp_path / "eval", "eval_only=true", f"load_from={tmp_path / 'run'}")
    )
    assert evaluated["eval"] == trained["final_eval"]
