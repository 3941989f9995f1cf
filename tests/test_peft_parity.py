"""Same settings, same seed, peftlab's own training loop: ``method=peft`` with peft's LoRA, DoRA and VeRA
trains exactly what ``method=lora``, ``method=lora method.variant=dora`` and ``method=elora`` (its shared
form) train. Bit for bit: the eval loss and every adapter tensor after the run are equal, with dropout in
the model and in the adapters, weight decay and gradient clipping on. That needs the same initial tensors,
the same random draws in the same order (initialisation and every dropout mask), the same op order in
the forward and the same parameter order in the optimizer (clipping sums the gradient norms in order)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from peftlab.blocks.lowrank import low_rank_layers
from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir

# inside peft (its VeRA and DoRA ask transformers a deprecated question)
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
TARGETS = "[query,value]"
LORA = [f"method.target_modules={TARGETS}", "method.dropout=0.1"]
PEFT_LORA = [
    "method=peft",
    "method.peft_type=LORA",
    "method.config={r: 8, lora_alpha: 16, lora_dropout: 0.1, target_modules: [query, value]}",
]


def trained(tmp_path, *overrides: str):
    """A trainer after its run (4 steps of ``schedule=quick`` on tiny_bert, model dropout 0.1)."""
    tmp_path.mkdir(parents=True)
    trainer = build_trainer(tiny_config(tmp_path, *overrides), RunDir(tmp_path))
    trainer.fit()
    return trainer


def peft_tensors(trainer, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """peft's adapter tensors by peftlab's names (``<module>.<ours>``), in the model's order."""
    found = {}
    for name, param in trainer.model.backbone.named_parameters():
        for peft_name, ours in names:
            if f".{peft_name}." in name or name.endswith(f".{peft_name}.default"):
                module = name.split(f".{peft_name}")[0]
                found[f"{module}.{ours}"] = param.detach()
    return found


def our_tensors(trainer, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    found = {}
    for module, layer in low_rank_layers(trainer.model.backbone):
        for _, ours in names:
            found[f"{module}.{ours}"] = layer.get_parameter(ours).detach()
    return found


def assert_same_run(ours, theirs, names: tuple[tuple[str, str], ...]) -> None:
    """Equal eval metrics (loss included) and equal adapter and head tensors, to the last bit."""
    assert ours.history.last_eval == theirs.history.last_eval
    mine, peft = our_tensors(ours, names), peft_tensors(theirs, names)
    assert list(mine) == list(peft) and mine
    for name, tensor in mine.items():
        assert torch.equal(tensor, peft[name]), name
    for (name, a), (_, b) in zip(
        ours.model.head.named_parameters(), theirs.model.head.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    assert [g["lr"] for g in ours.optimizer.param_groups] == [g["lr"] for g in theirs.optimizer.param_groups]


def test_peft_lora_trains_bit_for_bit_as_our_lora(tmp_path):
    ours = trained(tmp_path / "ours", "method=lora", *LORA)
    theirs = trained(tmp_path / "peft", *PEFT_LORA)
    assert_same_run(ours, theirs, (("lora_A", "lora_A"), ("lora_B", "lora_B")))


def test_peft_dora_trains_bit_for_bit_as_our_dora(tmp_path):
    ours = trained(tmp_path / "ours", "method=lora", *LORA, "method.variant=dora")
    theirs = trained(tmp_path / "peft", *PEFT_LORA, "+method.config.use_dora=true")
    names = (("lora_A", "lora_A"), ("lora_B", "lora_B"), ("lora_magnitude_vector", "variant.magnitude"))
    assert_same_run(ours, theirs, names)


def test_peft_vera_trains_bit_for_bit_as_elora_shared(tmp_path):
    """ELoRA with one shared pair is VeRA; peft does not decay 1-D tensors, so neither does elora here
    (``decay_vectors=false``)."""
    elora = [
        "method=elora",
        "method.rank=8",
        f"method.target_modules={TARGETS}",
        "method.decay_vectors=false",
        "method.shared_projections=true",
    ]
    vera = [
        "method=peft",
        "method.peft_type=VERA",
        "~method.config",
        "+method.config={r: 8, target_modules: [query, value], projection_prng_key: 0, d_initial: 0.1}",
    ]
    ours, theirs = trained(tmp_path / "ours", *elora), trained(tmp_path / "peft", *vera)
    assert_same_run(ours, theirs, (("vera_lambda_b", "vec_b"), ("vera_lambda_d", "vec_d")))
