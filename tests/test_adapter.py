"""The Adapter against its definition: step 0 equals the base; it sits on the attention-output and
FFN-output projections of BERT- and Llama-style models; only adapters and head train; the layer
computes h + up(act(down(h))); a saved adapter reloads to identical metrics."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from omegaconf import OmegaConf
from torch import nn

from peftlab.blocks.adapter import BottleneckAdapter
from peftlab.config import compose_config
from peftlab.errors import ConfigError
from peftlab.methods.base import build_method
from peftlab.models import build_model
from peftlab.run.experiment import run_experiment


def adapter(**options):
    return build_method(OmegaConf.create({"name": "adapter", **options}))


def adapters(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, BottleneckAdapter)]


def test_layer_is_a_residual_bottleneck_on_the_output():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = BottleneckAdapter(base, bottleneck=3, activation="tanh", scale=0.5)
    x = torch.randn(4, 6)
    assert torch.equal(layer(x), base(x))  # up = 0 at init
    nn.init.normal_(layer.adapter_up.weight)
    nn.init.normal_(layer.adapter_up.bias)
    h = x @ base.weight.T + base.bias
    down = torch.tanh(h @ layer.adapter_down.weight.T + layer.adapter_down.bias)
    expected = h + 0.5 * (down @ layer.adapter_up.weight.T + layer.adapter_up.bias)
    torch.testing.assert_close(layer(x), expected)


def test_bert_step0_placement_and_trainable(tiny_model, batch):
    model, _ = tiny_model
    with torch.no_grad():
        before = model(**batch).logits
    adapter(bottleneck=8).setup(model)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before, rtol=0, atol=0)
    names = adapters(model.backbone)
    assert names == [
        f"encoder.layer.{i}.{part}" for i in range(2) for part in ("attention.output.dense", "output.dense")
    ]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") or ".adapter_" in n for n in trainable)
    assert sum(".adapter_" in n for n in trainable) == 4 * 4  # down/up weight + bias per adapter


def test_llama_placement():
    torch.manual_seed(0)
    model, _ = build_model(compose_config(["model=tiny_llama"]).model, num_labels=2)
    adapter(bottleneck=8).setup(model)
    assert [n.rsplit(".", 1)[-1] for n in adapters(model.backbone)] == ["o_proj", "down_proj"] * 2


def test_bad_options_name_the_allowed_values(tiny_model):
    with pytest.raises(ConfigError, match="allowed: relu, gelu, tanh, silu"):
        adapter(activation="swish")
    with pytest.raises(ConfigError, match="adapter bottleneck=33 is not allowed"):
        adapter(bottleneck=33).setup(tiny_model[0])


def test_adapter_run_reloads_to_identical_metrics(tmp_path):
    results = run_experiment(tiny_config(tmp_path / "run", "method=adapter", "method.bottleneck=4"))
    reloaded = run_experiment(
        tiny_config(tmp_path / "eval", "eval_only=true", f"load_from={tmp_path / 'run'}")
    )
    assert reloaded["eval"]["accuracy"] == results["final_eval"]["accuracy"]
    assert reloaded["eval"]["loss"] == pytest.approx(results["final_eval"]["loss"], abs=1e-6)
