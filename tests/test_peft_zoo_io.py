"""``method=peft`` beyond two steps: AdaLoRA's budget moves ranks, prompt tuners pool the real tokens,
peft's refusals come before a run folder, the adapter reloads and exports, and a run resumes after a kill."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import cli, tiny_config

from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir
from peftlab.train.summary import method_report

# AdaLoRA's schedule inside 8 steps: 2 warm-up, 3 pruning steps budgeted every step, 3 final steps
ADALORA_SHORT = [
    "method=peft_adalora",
    "schedule.max_steps=8",
    "method.config.tinit=2",
    "method.config.tfinal=3",
    "method.config.deltaT=1",
]


def test_adalora_budget_moves_the_ranks(tmp_path):
    trainer = build_trainer(tiny_config(tmp_path, *ADALORA_SHORT), RunDir(tmp_path))
    start = trainer.method.allocation.ranks()
    assert set(start.values()) == {12}  # init_r everywhere
    trainer.fit()
    end = method_report(trainer)["ranks"]
    assert end.keys() == start.keys() and end != start
    assert sum(end.values()) < sum(start.values())  # pruned towards target_r 8 on average
    pattern = trainer.method.wrapped.peft_config["default"].rank_pattern
    assert pattern and any(not all(kept) for kept in pattern.values())  # peft's own record agrees


def pooled_and_by_hand(tmp_path, pooling: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The head's pooled features of a prompt-tuning run, and the backbone's states of the same batch
    computed by hand with the virtual tokens in front (mask: 1 for each virtual token)."""
    cfg = tiny_config(
        tmp_path, "method=peft_prompt_tuning", f"model.pooling={pooling}", "model.dropout=0.0"
    )
    trainer = build_trainer(cfg, RunDir(tmp_path))
    model = trainer.model.eval()
    batch = {k: v for k, v in next(iter(trainer.train_loader)).items() if k != "labels"}
    seen = []
    model.head.classifier.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    backbone = model.backbone
    n = backbone.forward.wrapped.active_peft_config.num_virtual_tokens
    prompt = model.peft_prompt["default"].embedding.weight  # RANDOM init: the prompt is this table
    bsz, mask = batch["input_ids"].shape[0], batch["attention_mask"]
    with torch.no_grad():
        model(**batch)
        embeds = backbone.embeddings.word_embeddings(batch["input_ids"])
        hidden = type(backbone).forward(
            backbone,
            inputs_embeds=torch.cat([prompt.expand(bsz, -1, -1), embeds], 1),
            attention_mask=torch.cat([mask.new_ones(bsz, n), mask], 1),
            token_type_ids=torch.cat([mask.new_zeros(bsz, n), batch["token_type_ids"]], 1),
        ).last_hidden_state
    return seen[0], hidden, mask, n


def test_prompt_tuning_mean_pools_the_real_tokens_only(tmp_path):
    pooled, hidden, mask, n = pooled_and_by_hand(tmp_path, "mean")
    real = mask.unsqueeze(-1).float()
    by_hand = (hidden[:, n:] * real).sum(1) / real.sum(1)
    torch.testing.assert_close(pooled, by_hand)
    with_virtual = torch.cat([torch.ones_like(real[:, :1]).expand(-1, n, -1), real], 1)
    averaged_in = (hidden * with_virtual).sum(1) / with_virtual.sum(1)
    assert not torch.allclose(pooled, averaged_in, atol=1e-4)  # the virtual tokens are not averaged in


def test_prompt_tuning_cls_is_the_first_real_token(tmp_path):
    pooled, hidden, _, n = pooled_and_by_hand(tmp_path, "cls")
    torch.testing.assert_close(pooled, hidden[:, n])
    assert not torch.allclose(pooled, hidden[:, 0], atol=1e-4)  # not the first virtual token


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            ["method=peft", "method.config.target_modules=[nosuch]", "model=tiny_bert"],
            r"peft peft_type=LORA cannot wrap BertModel: Target modules \{'nosuch'\} not found.*"
            r"allowed keys of LoraConfig: .*target_modules",
        ),
        (
            ["method=peft_prefix_tuning", "model=tiny_deberta"],
            r"peft peft_type=PREFIX_TUNING cannot wrap DebertaV2Model: its forward takes no "
            r"past_key_values.*allowed on it: PROMPT_TUNING",
        ),
    ],
    ids=["target_matches_nothing", "prefix_on_deberta"],
)
def test_peft_refusal_is_one_line_before_any_run_folder(tmp_path, overrides, line):
    run = tmp_path / "run"
    done = cli(*overrides, "task=rte", "schedule=quick", "progress_bar=false", f"hydra.run.dir={run}")
    assert done.returncode == 2
    errors = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and re.fullmatch(f"error: {line}.*", errors[0]), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not run.exists()
