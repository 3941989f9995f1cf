"""``task.packing=true``: a packed batch gives the padded batch's loss and gradients (tiny_llama + LoRA),
a run trains with it, and architectures that do not isolate packed rows are refused before any run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from peftlab.cli import check_on_model
from peftlab.config import check_config
from peftlab.errors import ConfigError
from peftlab.models.lm import IGNORE_INDEX
from peftlab.run.experiment import build_trainer, run_experiment
from peftlab.run.folder import RunDir
from peftlab.tasks.packing import pack_rows, packed_batch

LM = ["model=tiny_llama", "task=alpaca", "method=lora", "measure.flops=false", "task.max_eval_samples=2"]
LM += ["task.max_new_tokens=2", "task.max_prompt_tokens=64", "task.max_target_tokens=32"]
LM += ["schedule.max_seq_length=256"]


def test_rows_hold_each_sequence_once_within_capacity():
    lengths = [30, 5, 17, 64, 40, 12, 1]
    rows = pack_rows(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) == 3  # 64 | 40+17+5+1 | 30+12
    batch = packed_batch([[7] * n for n in (3, 2)], [[1] * 3, [2] * 2], capacity=8, pad_id=0)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 1, 1, IGNORE_INDEX, 2]]


def sum_loss_and_grads(model, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch).loss * model.count_targets(batch["labels"])
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return loss.detach(), grads


def test_packed_batch_gives_the_padded_loss_and_lora_gradients(tmp_path):
    cfg = tiny_config(tmp_path, *LM, "task.max_train_samples=8", "task.packing=true")
    trainer = build_trainer(cfg, RunDir(tmp_path))
    loader, model = trainer.train_loader, trainer.model
    model.eval()  # no dropout: the two layouts must see the same function
    items = list(loader.dataset)
    packed = loader.collate_fn(items)
    loader.collate_fn.packing = None
    padded = loader.collate_fn(items)
    assert len(packed["input_ids"]) < len(padded["input_ids"])  # rows of 256 hold several examples
    assert int((packed["position_ids"] == 0).sum()) == len(items)
    with torch.no_grad():  # the LoRA B matrices start at zero: move them, so their A gradients count
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    loss_packed, grads_packed = sum_loss_and_grads(model, packed)
    loss_padded, grads_padded = sum_loss_and_grads(model, padded)
    assert float(loss_packed) == pytest.approx(float(loss_padded), rel=1e-5)
    assert grads_packed and all(g.abs().sum() > 0 for g in grads_padded)
    for a, b in zip(grads_packed, grads_padded, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_packed_run_trains_and_records_packing(tmp_path):
    overrides = [*LM, "task.max_train_samples=8", "schedule.max_steps=2", "task.packing=true"]
    results = run_experiment(tiny_config(tmp_path / "run", *overrides, "schedule.batch_size=4"))
    assert results["status"] == "completed" and results["steps"] == 2
    assert "packing: true" in (tmp_path / "run" / "config.yaml").read_text()
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["train_examples"] == 8 and saved["tokens_per_s"] > 0


def test_a_packed_step_counts_its_examples_not_its_rows(tmp_path):
    """Throughput's samples: 4 examples a step though they lie in fewer rows (each starts at position 0)."""
    overrides = [*LM, "task.max_train_samples=8", "schedule.max_steps=2", "schedule.batch_size=4"]
    trainer = build_trainer(tiny_config(tmp_path, *overrides, "task.packing=true"), RunDir(tmp_path))
    rows = [len(batch["input_ids"]) for batch in trainer.train_loader]
    assert max(rows) < 4  # packed: fewer rows than examples
    assert trainer.fit(final_eval=False).samples == 8


def test_packing_under_torchrun_is_refused(tmp_path, monkeypatch):
    """Each rank would pack its own share into a different number of rows: refused, not measured."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = tiny_config(tmp_path / "run", *LM, "task.packing=true")
    with pytest.raises(ConfigError, match="task.packing=true under torchrun.*WORLD_SIZE=2"):
        check_on_model(check_config(cfg))
    assert not (tmp_path / "run").exists()


def test_packing_on_opt_is_refused_before_any_run_folder(tmp_path):
    opt = [o.replace("tiny_llama", "tiny_opt") for o in LM]
    cfg = tiny_config(tmp_path / "run", *opt, "task.packing=true")
    with pytest.raises(ConfigError, match="model type opt does not.*allowed model types: llama"):
        build_trainer(cfg, RunDir(tmp_path / "run"))
    # the check Hydra's callback runs before it creates the run folder (cli.CheckFirst)
    with pytest.raises(ConfigError, match=r"model tiny_opt \(opt\) does not isolate"):
        check_on_model(check_config(cfg))
    assert not (tmp_path / "run").exists()


def epoch_batches(tmp_path, *overrides: str) -> list[tuple[int, int]]:
    """(examples, real tokens) of each batch of an epoch of a seeded training loader."""
    cfg = tiny_config(tmp_path, *LM, "task.max_train_samples=24", "schedule.batch_size=4", *overrides)
    loader = build_trainer(cfg, RunDir(tmp_path)).train_loader
    out = []
    for batch in loader:
        starts = batch["position_ids"] == 0 if "position_ids" in batch else batch["attention_mask"][:, :1]
        out.append((int(starts.sum()), int(batch["attention_mask"].sum())))
    return out


@pytest.mark.parametrize("grouped", ["false", "true"])
def test_packing_keeps_the_seeded_batches_of_examples(tmp_path, grouped):
    """The sampler, and so the order that resume replays, is the unpacked one: each step the same
    examples (``schedule.batch_size`` of them), only laid out in fewer rows; with length grouping too."""
    group = f"task.group_by_length={grouped}"
    padded = epoch_batches(tmp_path / "a", group)
    packed = epoch_batches(tmp_path / "b", group, "task.packing=true")
    assert packed == padded and [n for n, _ in padded] == [4] * 6


def test_allow_list_is_what_test_packing_checks():
    """A model type joins ``PACKABLE_TYPES`` only with its packed-loss check in tests/test_packing.py
    (tiny_llama: llama); encoder-decoders and other attentions are refused."""
    from transformers import BartConfig, LlamaConfig

    from peftlab.tasks.packing import PACKABLE_TYPES, check_packable

    assert PACKABLE_TYPES == ("llama",)
    check_packable(LlamaConfig(), "tiny_llama")
    with pytest.raises(ConfigError, match=r"model tiny_bart \(bart\) does not isolate"):
        check_packable(BartConfig(), "tiny_bart")
    flash = LlamaConfig()
    flash._attn_implementation = "flex_attention"
    with pytest.raises(ConfigError, match="uses attention 'flex_attention'; allowed: sdpa, eager"):
        check_packable(flash, "tiny_llama")
