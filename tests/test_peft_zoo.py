"""Every ``conf/method/peft_<name>.yaml`` preset trains on an encoder classifier and on a decoder LM, in
the one loop, or is refused in one line naming why; prompt-style tuners pool the real tokens only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_config

from peftlab.errors import ConfigError
from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("peft_*.yaml"))
SETUPS = {"tiny_bert": ["model=tiny_bert", "task=rte"], "tiny_llama": ["model=tiny_llama", "task=alpaca"]}
REFUSED: dict[tuple[str, str], str] = {}  # (preset, model) -> what the refusal names


def two_steps(tmp_path: Path, preset: str, model: str) -> tuple[list[float], dict[str, torch.Tensor], object]:
    """Two optimizer steps; the trained tensors before them, and the trainer."""
    cfg = tiny_config(tmp_path, f"method={preset}", *SETUPS[model], "schedule.max_steps=2")
    trainer = build_trainer(cfg, RunDir(tmp_path))
    trainer.model.train()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    batches = iter(trainer.train_loader)
    losses = [float(trainer.train_step(next(batches))) for _ in range(2)]
    return losses, before, trainer


def test_every_issue_preset_is_shipped():
    names = {
        "ia3",
        "adalora",
        "loha",
        "lokr",
        "oft",
        "boft",
        "prompt_tuning",
        "prefix_tuning",
        "ln_tuning",
        "vera",
        "fourierft",
        "vblora",
        "hra",
    }
    assert {f"peft_{n}" for n in names} <= set(PRESETS)


@pytest.mark.parametrize("model", sorted(SETUPS))
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_two_steps(tmp_path, preset, model):
    if (preset, model) in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[preset, model]):
            two_steps(tmp_path, preset, model)
        return
    losses, before, trainer = two_steps(tmp_path, preset, model)
    assert trainer.state.step == 2 and all(torch.isfinite(torch.tensor(losses)))
    after = dict(trainer.model.named_parameters())
    backbone_moved = [n for n in before if not n.startswith("head.") and not torch.equal(before[n], after[n])]
    assert backbone_moved, "peft's own tensors did not train"
