"""Model building: pooling choices, the backbone pooler as part of the head, dropout override, and the
errors for hub models offline, bad device/dtype values and inputs longer than the position table."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from peftlab.config import compose_config
from peftlab.errors import ConfigError
from peftlab.methods.base import build_method
from peftlab.models import build_model, resolve_device
from peftlab.models.build import position_limit
from peftlab.run.experiment import run_experiment


def tiny(*overrides: str):
    torch.manual_seed(0)
    cfg = compose_config(["model=tiny_bert", *overrides])
    model, tokenizer = build_model(cfg.model, num_labels=3)
    return model.eval(), tokenizer, cfg


def test_mean_pooling_ignores_padding():
    model, tokenizer, _ = tiny()
    short = tokenizer(["a short one"], return_tensors="pt")
    padded = tokenizer(["a short one"], padding="max_length", max_length=20, return_tensors="pt")
    torch.testing.assert_close(model(**short).logits, model(**padded).logits, rtol=1e-5, atol=1e-5)
    assert model(**short).logits.shape == (1, 3)


def test_pooler_head_takes_over_the_backbone_pooler_and_trains_it():
    model, _, cfg = tiny("model.pooling=pooler")
    assert model.backbone.pooler is None and model.head.pooler is not None
    build_method(compose_config(["method=head"]).method).setup(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.pooler.dense.weight", "head.classifier.weight"} <= trainable
    assert all(n.startswith("head.") for n in trainable)


def test_mean_pooling_drops_the_unused_pooler():
    model, _, _ = tiny("model.pooling=mean")
    assert model.backbone.pooler is None and model.head.pooler is None


def test_regression_head_uses_mse():
    torch.manual_seed(0)
    model, tokenizer = build_model(compose_config(["model=tiny_bert"]).model, num_labels=1)
    enc = tokenizer(["x y"], return_tensors="pt")
    out = model(**enc, labels=torch.tensor([2.5]))
    torch.testing.assert_close(out.loss, (out.logits.squeeze() - 2.5) ** 2)


def test_dropout_override_reaches_the_backbone():
    model, _, _ = tiny("model.dropout=0.0")
    assert all(m.p == 0.0 for m in model.backbone.modules() if isinstance(m, torch.nn.Dropout))
    model, _, _ = tiny()
    assert model.backbone.config.hidden_dropout_prob == 0.1  # null keeps the model's own value


def test_bad_pooling_device_dtype_are_refused():
    with pytest.raises(ConfigError, match="model.pooling='max' is not allowed; allowed: mean, cls, pooler"):
        tiny("model.pooling=max")
    with pytest.raises(ConfigError, match="model.dtype='fp8' is not allowed"):
        tiny("model.dtype=fp8")
    with pytest.raises(ConfigError, match="model.device='gpu0' is not a device"):
        resolve_device("gpu0")


def test_hub_model_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_config(["model=deberta_v3_base"])
    expected = r"model 'deberta_v3_base' could not be loaded .*Models that run offline"
    with pytest.raises(ConfigError, match=expected):
        build_model(cfg.model, num_labels=2)


@pytest.mark.parametrize(
    ("model", "head", "limit"),
    [("tiny_bert", "classifier", 128), ("tiny_bart", "lm", 640), ("tiny_llama", "lm", None)],
)
def test_position_limit_is_the_absolute_position_table(model, head, limit):
    """BART's table is offset by 2 (642 rows for 640 positions); Llama's rotary positions have none."""
    built, _ = build_model(compose_config([f"model={model}"]).model, 2 if head == "classifier" else 0, head)
    assert position_limit(built) == limit


def test_sequence_length_beyond_the_position_table_is_refused(tmp_path):
    """Before: a tensor-size RuntimeError in the embeddings at the first long batch."""
    message = r"schedule.max_seq_length=256 is not allowed; allowed: at most 128, the positions this model"
    with pytest.raises(ConfigError, match=message):
        run_experiment(tiny_config(tmp_path, "schedule.max_seq_length=256"))
