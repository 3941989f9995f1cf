"""LoRA checked against its math: step 0 equals the base model, merge is exact, only the adapter and
the head train, bad ranks/targets fail, the low-rank path computes (alpha/r) B A x."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from omegaconf import OmegaConf

from peftlab.blocks.lowrank import LowRankLinear, low_rank_layers
from peftlab.blocks.protocol import merge_adapters, unmerge_adapters
from peftlab.errors import ConfigError
from peftlab.methods.base import build_method


def lora(**options):
    return build_method(OmegaConf.create({"name": "lora", **options}))


def randomize_adapters(model):
    torch.manual_seed(1)
    for _, layer in low_rank_layers(model):
        torch.nn.init.normal_(layer.lora_B, std=0.5)


def test_step0_output_equals_base_model(tiny_model, batch):
    model, _ = tiny_model
    base_logits = model(**batch).logits
    lora(target_modules=["query", "key", "value", "dense"]).setup(model)
    assert len(low_rank_layers(model)) == 2 * 6  # 2 layers x (q, k, v, attn-out, ffn-in, ffn-out)
    assert torch.equal(model(**batch).logits, base_logits)


def test_low_rank_layer_computes_the_formula():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 12)
    layer = LowRankLinear(base, rank=4, scale=2.0)
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 16)
    expected = base(x) + 2.0 * x @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)
    # peft's init: A kaiming-uniform(a=sqrt(5)) -> bound 1/sqrt(in_features); B zeros at creation
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(16)
    assert not LowRankLinear(base, rank=4).lora_B.any()


def test_scale_alpha_over_r_and_rslora():
    assert lora(rank=8, alpha=16).config.scale == 2.0
    assert lora(rank=16, alpha=8, rslora=True).config.scale == 2.0


def test_merged_equals_unmerged(tiny_model, batch):
    model, _ = tiny_model
    lora(target_modules=["query", "value", "dense"]).setup(model)
    randomize_adapters(model)
    base_weight = model.backbone.encoder.layer[0].attention.self.query.base_layer.weight.clone()
    unmerged = model(**batch).logits
    merge_adapters(model)
    torch.testing.assert_close(model(**batch).logits, unmerged, rtol=1e-5, atol=1e-5)
    assert not torch.equal(
        model.backbone.encoder.layer[0].attention.self.query.base_layer.weight, base_weight
    )
    unmerge_adapters(model)
    torch.testing.assert_close(model(**batch).logits, unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        model.backbone.encoder.layer[0].attention.self.query.base_layer.weight, base_weight, rtol=0, atol=1e-6
    )


def test_only_adapter_and_head_require_grad(tiny_model, batch):
    model, _ = tiny_model
    lora().setup(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable
    for name in trainable:
        assert name.startswith("head.") or name.endswith((".lora_A", ".lora_B")), name
    assert {n for n in trainable if n.startswith("head.")} == {
        f"head.{n}" for n, _ in model.head.named_parameters()
    }
    # and the frozen base gets no gradient at all
    model(**batch).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name


@pytest.mark.parametrize("rank", [0, -1, 33])
def test_bad_rank_is_refused_with_the_allowed_range(tiny_model, rank):
    model, _ = tiny_model
    with pytest.raises(ConfigError, match=rf"rank={rank} .*allowed"):
        lora(rank=rank).setup(model)


def test_target_that_matches_nothing_is_refused(tiny_model):
    model, _ = tiny_model
    with pytest.raises(ConfigError, match=r"\['qeury'\] match no layer.*allowed"):
        lora(target_modules=["query", "qeury"]).setup(model)
    with pytest.raises(ConfigError, match="regex 'nothing.*' matches no layer"):
        lora(target_modules="nothing.*").setup(copy.deepcopy(model))


def test_regex_targets_fullmatch(tiny_model):
    model, _ = tiny_model
    lora(target_modules=r".*layer\.0\.attention\.self\.(query|value)").setup(model)
    names = [name for name, _ in low_rank_layers(model)]
    prefix = "backbone.encoder.layer.0.attention.self"
    assert names == [f"{prefix}.query", f"{prefix}.value"]


def test_unknown_method_option_is_refused():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['rnak'\]; allowed: .*rank"):
        lora(rnak=4)
