"""``method=peft``: huggingface peft's tuner on the backbone (the benchmark's peer). With LoRA settings equal
to ``method=lora`` it trains the same model, bit for bit from the same seed; its
defaults are our lora's; an unknown peft type or config key is refused in one line listing what is allowed."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from omegaconf import OmegaConf

from peftlab.config import compose_config
from peftlab.errors import ConfigError
from peftlab.methods.base import build_method
from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir

# no dropout anywhere, so the forwards draw no random numbers; warmup 0, so the first step moves B
EXACT = ["model.dropout=0.0", "model.head_dropout=0.0", "schedule.warmup_ratio=0.0"]


def trainer_of(tmp_path, method: str):
    trainer = build_trainer(
        tiny_config(tmp_path / method, f"method={method}", *EXACT), RunDir(tmp_path / method)
    )
    trainer.model.train()
    return trainer


def losses(trainer, steps: int = 3) -> list[float]:
    """The loss of each step: the last one is the loss after ``steps - 1`` optimizer steps."""
    batches = iter(trainer.train_loader)
    return [float(trainer.train_step(next(batches))) for _ in range(steps)]


def peft_a(trainer) -> dict[str, torch.nn.Parameter]:
    """peft's lora_A matrices by peftlab's parameter names."""
    return {
        n.replace(".default.weight", ""): p
        for n, p in trainer.model.backbone.named_parameters()
        if "lora_A" in n
    }


def test_peft_lora_trains_as_our_lora(tmp_path):
    ours, theirs = trainer_of(tmp_path, "lora"), trainer_of(tmp_path, "peft")
    assert ours.trainable_count == theirs.trainable_count
    a = dict(ours.model.backbone.named_parameters())
    assert all(torch.equal(p, a[n]) for n, p in peft_a(theirs).items())  # our A is drawn as peft draws it
    assert losses(ours) == losses(theirs)  # the same computation, bit for bit (tests/test_peft_parity.py)


def test_peft_defaults_are_our_lora_defaults():
    lora, peft = (compose_config([f"method={m}"]).method for m in ("lora", "peft"))
    assert peft.peft_type == "LORA"
    assert dict(peft.config) == {
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": list(lora.target_modules),
    }


def test_unknown_peft_type_or_config_key_is_refused_with_what_is_allowed():
    with pytest.raises(ConfigError, match=r"^peft peft_type='NOPE' is not allowed; allowed: .*LORA.*VERA"):
        build_method(OmegaConf.create({"name": "peft", "peft_type": "NOPE"}))
    with pytest.raises(
        ConfigError, match=r"^peft config key\(s\) \['rank'\] .* LoraConfig; allowed: .*lora_alpha"
    ):
        build_method(OmegaConf.create({"name": "peft", "config": {"rank": 8}}))
    vera = build_method(OmegaConf.create({"name": "peft", "peft_type": "VERA", "config": {"r": 4}}))
    assert type(vera.config.build()).__name__ == "VeraConfig"
