"""``method=peft`` beyond two steps: AdaLoRA's budget moves ranks, prompt tuners pool the real tokens,
peft's refusals come before a run folder, the adapter reloads and exports, and a run resumes after a kill."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import cli, tiny_config
from peft import PeftModel
from safetensors.torch import load_file
from test_resume import COMMON, STEPS, kill_after_checkpoint, metric_rows
from transformers import AutoModel

from peftlab.errors import ConfigError
from peftlab.export import export, load_head, rebuild
from peftlab.models import build_model
from peftlab.run.experiment import build_trainer, run_experiment, seed_everything
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
    cfg = tiny_config(tmp_path, "method=peft_prompt_tuning", f"model.pooling={pooling}", "model.dropout=0.0")
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
        hidden = (
            type(backbone)
            .forward(
                backbone,
                inputs_embeds=torch.cat([prompt.expand(bsz, -1, -1), embeds], 1),
                attention_mask=torch.cat([mask.new_ones(bsz, n), mask], 1),
                token_type_ids=torch.cat([mask.new_zeros(bsz, n), batch["token_type_ids"]], 1),
            )
            .last_hidden_state
        )
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


# a few steps at a high LR, so a wrong reload or export shows in the outputs
TRAINED = ["task=rte", "schedule.max_steps=2", "schedule.lr=0.02", "measure.flops=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One finished run per preset, made when a test first asks for it."""
    root, made = tmp_path_factory.mktemp("runs"), {}

    def get(preset: str):
        if preset not in made:
            made[preset] = run_experiment(tiny_config(root / preset, f"method={preset}", *TRAINED))
        return root / preset, made[preset]

    return get


def test_eval_only_reloads_a_peft_loha_run_to_the_same_metrics(runs, tmp_path):
    run_dir, results = runs("peft_loha")
    assert (run_dir / "peft_adapter" / "adapter_model.safetensors").exists()
    reloaded = run_experiment(tiny_config(tmp_path / "eval", "eval_only=true", f"load_from={run_dir}"))
    assert reloaded["eval"]["accuracy"] == results["final_eval"]["accuracy"]
    assert reloaded["eval"]["loss"] == pytest.approx(results["final_eval"]["loss"], abs=1e-6)


def inputs_and_ours(run_dir):
    run = rebuild(run_dir)
    enc = run.processor(
        ["a small test sentence", "another, longer one"],
        ["paired", "more"],
        padding=True,
        return_tensors="pt",
    )
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    with torch.no_grad():
        return run, inputs, run.model(**inputs).logits


def fresh_base(run):
    seed_everything(run.cfg.seed)
    return build_model(run.cfg.model, 2)[0].backbone.eval()


@torch.no_grad()
def logits_from(backbone, folder, inputs):
    return load_head(folder)(backbone(**inputs).last_hidden_state, inputs["attention_mask"])


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("preset", "peft_type"), [("peft_loha", "LOHA"), ("peft", "LORA")])
def test_to_peft_loads_in_peft_with_the_same_logits(runs, tmp_path, preset, peft_type):
    folder = export(runs(preset)[0], "peft", tmp_path / "peft")
    run, inputs, ours = inputs_and_ours(runs(preset)[0])
    base = fresh_base(run)
    before = logits_from(base, folder, inputs)
    theirs = logits_from(PeftModel.from_pretrained(base, str(folder)).eval(), folder, inputs)
    assert not torch.allclose(before, ours, atol=1e-4)  # the adapter changes the outputs
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == peft_type


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_loha_merges_to_the_same_logits(runs, tmp_path):
    folder = export(runs("peft_loha")[0], "merged", tmp_path / "merged")
    _, inputs, ours = inputs_and_ours(runs("peft_loha")[0])
    loaded = AutoModel.from_pretrained(str(folder)).eval()
    torch.testing.assert_close(logits_from(loaded, folder, inputs), ours, rtol=1e-4, atol=1e-5)


def test_prompt_tuning_merge_is_refused_naming_why(runs, tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"^method 'peft' cannot be exported merged: peft_type=PROMPT_TUNING: its virtual "
        r"tokens are inputs, not weights: there is nothing to fold into a layer$",
    ):
        export(runs("peft_prompt_tuning")[0], "merged", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.slow  # a reference run, a run killed midway and its resumption
@pytest.mark.parametrize("preset", ["peft_adalora", "peft_prompt_tuning"])
def test_killed_peft_run_resumes_bit_identically(tmp_path, preset):
    args = [*COMMON, f"method={preset}"]
    reference = cli(*args, f"hydra.run.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr[-2000:]
    run = tmp_path / "run"
    assert kill_after_checkpoint(run, args, min_step=20) < STEPS
    resumed = cli("resume=true", f"hydra.run.dir={run}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = json.loads((tmp_path / "reference" / "results.json").read_text())
    got = json.loads((run / "results.json").read_text())
    assert got["final_eval"] == expected["final_eval"] and got["steps"] == STEPS
    assert got["method_report"] == expected["method_report"]  # AdaLoRA's final ranks
    assert metric_rows(run) == metric_rows(tmp_path / "reference")
    ours = load_file(run / "peft_adapter" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "reference" / "peft_adapter" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
