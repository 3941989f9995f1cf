"""LoRA initialisations against peft's from the same weights: OLoRA (QR of W: A, B and the residual base,
and the same random draws as peft's layer makes, so what follows sees the same generator); LoftQ without
quantisation and EVA are refused in one line saying why."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from peft import LoraConfig, inject_adapter_in_model
from test_variants import TARGETS, lora, peft_layer, tiny

from peftlab.blocks.lowrank import low_rank_layers
from peftlab.errors import ConfigError
from peftlab.methods.base import build_method


@pytest.mark.parametrize("init", ["olora", "pissa"])
@pytest.mark.parametrize("model_name", list(TARGETS))
def test_init_equals_peft_and_draws_what_peft_draws(model_name, init):
    model, batch = tiny(model_name)
    ref = copy.deepcopy(model)
    torch.manual_seed(5)
    lora(model, init=init, target_modules=TARGETS[model_name])
    ours_next = torch.rand(3)
    torch.manual_seed(5)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[model_name], init_lora_weights=init)
    inject_adapter_in_model(config, ref.backbone)
    assert torch.equal(ours_next, torch.rand(3))  # the generator is where peft leaves it
    for name, layer in low_rank_layers(model):
        theirs = peft_layer(ref, name)
        a, b = layer.low_rank_pair()
        torch.testing.assert_close(a, theirs.lora_A["default"].weight)
        torch.testing.assert_close(b, theirs.lora_B["default"].weight)
        torch.testing.assert_close(layer.base_layer.weight, theirs.base_layer.weight)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, ref(**batch).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("init", ["loftq", "eva"])
def test_undefined_inits_are_refused_with_the_reason(init):
    with pytest.raises(ConfigError, match=rf"^method.init={init} is refused: .*allowed: lora, pissa, olora"):
        build_method(OmegaConf.create({"name": "lora", "init": init}))
