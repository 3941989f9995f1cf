"""``method=peft``: huggingface peft's tuner on the backbone (the benchmark's peer). With LoRA settings equal
to ``method=lora`` it trains the same model: bit-identical once both start from the same A (peft draws its
A from the same seed but after other draws, so from the seed alone the losses are only close); its
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
    same_seed = losses(ours), losses(theirs)
    # the first forward is the base model (B = 0) in both; after it the A matrices differ: peft builds
    # lora_A and lora_B as nn.Linear (each draws its own init) and then draws A again
    assert same_seed[0][0] == same_seed[1][0] and same_seed[0] != same_seed[1]
    assert same_seed[0] == pytest.approx(same_seed[1], abs=1e-3)
    ours, theirs = trainer_of(tmp_path / "copied", "lora"), trainer_of(tmp_path / "copied", "peft")
    a = dict(ours.model.backbone.named_parameters())
    with torch.no_grad():
        for name, param in peft_a(theirs).items():
            param.copy_(a[name])
    assert losses(ours) == losses(theirs)  # the same computation, bit for bit, from the same A


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
