"""Zero-shot evaluation through lm-evaluation-harness: on a tiny random Llama with LoRA applied (B random,
so the adapter changes the scores), the harness's acc and acc_norm on the first items of each local task
equal a hand computation of the rule (the log-likelihood of each choice given the context, argmax; for
acc_norm divided by the choice's length in characters), with the prompts written out here; missing data
fails naming the paths tried, or is skipped; a training run and eval_only report the metrics."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from omegaconf import OmegaConf

from peftlab.blocks.lowrank import low_rank_layers
from peftlab.config import compose_config
from peftlab.errors import ConfigError
from peftlab.methods.base import build_method
from peftlab.models import build_model
from peftlab.run.experiment import run_experiment
from peftlab.tasks.data_root import find_data_file
from peftlab.tasks.zero_shot import ZeroShotSuite

pytest.importorskip("lm_eval")
ITEMS = 8


def data(relative: str):
    return find_data_file(None, relative)[0]


def jsonl(relative: str) -> list[dict]:
    return [json.loads(line) for line in data(relative).open() if line.strip()][:ITEMS]


# per item: (contexts, continuations, gold, the choices acc_norm divides by), as the harness builds them
def arc_items(relative: str, stem_key: str = "question"):
    items = []
    for r in jsonl(relative):
        texts = [c["text"] for c in r["question"]["choices"]]
        labels = [c["label"] for c in r["question"]["choices"]]
        context = (
            f"Question: {r['question']['stem']}\nAnswer:" if stem_key == "question" else r["question"]["stem"]
        )
        items.append(([context] * len(texts), [" " + t for t in texts], labels.index(r["answerKey"]), texts))
    return items


def boolq_items():
    items = []
    for r in jsonl("superglue/BoolQ/val.jsonl"):
        context = f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:"
        items.append(([context] * 2, [" no", " yes"], int(r["label"]), ["no", "yes"]))
    return items


def rte_items():
    with data("glue/RTE/dev.tsv").open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:ITEMS]
    items = []
    for r in rows:
        context = f"{r['sentence1']}\nQuestion: {r['sentence2']} True or False?\nAnswer:"
        gold = ["entailment", "not_entailment"].index(r["label"])
        items.append(([context] * 2, [" True", " False"], gold, ["True", "False"]))
    return items


def winogrande_items():
    items = []
    for r in jsonl("winogrande/dev.jsonl"):
        blank = r["sentence"].index("_")
        contexts = [r["sentence"][:blank] + r[f"option{k}"] for k in (1, 2)]
        continuation = " " + r["sentence"][blank + 1 :].strip()
        items.append((contexts, [continuation] * 2, int(r["answer"]) - 1, contexts))
    return items


def hand_items():
    return {
        "arc_easy": arc_items("arc/ARC-Easy/ARC-Easy-Test.jsonl"),
        "arc_challenge": arc_items("arc/ARC-Challenge/ARC-Challenge-Test.jsonl"),
        "openbookqa": arc_items("openbookqa/Main/test.jsonl", stem_key="question_stem"),
        "boolq": boolq_items(),
        "rte": rte_items(),
        "winogrande": winogrande_items(),
    }


def log_likelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens | context), tokenised as the harness does: trailing spaces of the
    context move to the continuation; the continuation's tokens are those of context + continuation after
    the context's tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    context_ids = encode(context)
    continuation_ids = encode(context + continuation)[len(context_ids) :]
    ids = torch.tensor([(context_ids + continuation_ids)[:-1]])
    with torch.no_grad():
        logits = model(ids, torch.ones_like(ids)).logits[0, -len(continuation_ids) :]
    return float(logits.log_softmax(-1).gather(1, torch.tensor(continuation_ids)[:, None]).sum())


def tiny_llama_with_lora():
    torch.manual_seed(0)
    cfg = compose_config(["model=tiny_llama", "model.config.max_position_embeddings=4096"])
    model, tokenizer = build_model(cfg.model, 0, "lm")
    method = OmegaConf.create({"name": "lora", "rank": 4, "target_modules": "all-linear"})
    build_method(method).setup(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in low_rank_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.5)
    return model, tokenizer


def test_harness_scores_equal_the_hand_computed_log_likelihood_rule():
    model, tokenizer = tiny_llama_with_lora()
    items = hand_items()
    suite = ZeroShotSuite(list(items), None, limit=ITEMS, batch_size=4)
    model.train()
    scores = suite.evaluate(model, tokenizer)
    assert model.training  # put back as it was
    expected: dict[str, float] = {}
    for name, task_items in items.items():
        acc, acc_norm = [], []
        for contexts, continuations, gold, choices in task_items:
            lls = np.array(
                [log_likelihood(model, tokenizer, c, t) for c, t in zip(contexts, continuations, strict=True)]
            )
            acc.append(np.argmax(lls) == gold)
            acc_norm.append(np.argmax(lls / np.array([len(c) for c in choices])) == gold)
        expected[f"{name}/acc"] = float(np.mean(acc))
        if name in ("arc_easy", "arc_challenge", "openbookqa"):  # the tasks where the harness reports it
            expected[f"{name}/acc_norm"] = float(np.mean(acc_norm))
    model_scores = {k: v for k, v in scores.items() if not k.startswith("zero_shot/")}
    assert model_scores == pytest.approx(expected)
    # the length normalisation changes some answer (so acc_norm is checked, not a copy of acc)
    assert any(
        expected[f"{n}/acc_norm"] != expected[f"{n}/acc"] for n in ("arc_easy", "arc_challenge", "openbookqa")
    )
    accs = [expected[f"{n}/acc"] for n in items]
    norms = [expected.get(f"{n}/acc_norm", expected[f"{n}/acc"]) for n in items]
    assert scores["zero_shot/acc"] == pytest.approx(np.mean(accs))
    assert scores["zero_shot/acc_norm"] == pytest.approx(np.mean(norms))
    # the adapter is what the harness scored: without it, the log-likelihoods change
    contexts, continuations, _, _ = items["arc_easy"][0]
    with_adapter = log_likelihood(model, tokenizer, contexts[0], continuations[0])
    for _, layer in low_rank_layers(model):
        layer.lora_B.data.zero_()
    assert log_likelihood(model, tokenizer, contexts[0], continuations[0]) != pytest.approx(with_adapter)


# the harness's CB F1 (sklearn) warns when a tiny random model never predicts one class
@pytest.mark.filterwarnings("ignore:F-score is ill-defined:sklearn.exceptions.UndefinedMetricWarning")
def test_superglue_tasks_score_through_the_harness_from_local_files():
    model, tokenizer = tiny_llama_with_lora()
    scores = ZeroShotSuite(["cb", "copa", "wic", "wsc", "multirc"], None, limit=2).evaluate(model, tokenizer)
    for name in ("cb", "copa", "wic", "wsc", "multirc"):
        assert 0.0 <= scores[f"{name}/acc"] <= 1.0


def test_missing_data_names_the_paths_tried_or_is_skipped(tmp_path):
    with pytest.raises(
        ConfigError, match="zero-shot task hellaswag: no file at .*hellaswag_val.jsonl"
    ) as err:
        ZeroShotSuite(["hellaswag"], str(tmp_path))
    assert str(tmp_path / "hellaswag" / "hellaswag_val.jsonl") in str(err.value)
    suite = ZeroShotSuite(["hellaswag"], str(tmp_path), missing="skip")
    assert suite.names == [] and suite.evaluate(None, None) == {}
    with pytest.raises(ConfigError, match=r"unknown tasks \['piqa'\]; allowed: arc_challenge"):
        ZeroShotSuite(["piqa"], None)
    with pytest.raises(ConfigError, match="zero_shot_limit=0"):
        ZeroShotSuite(["rte"], None, limit=0)


def test_training_run_reports_zero_shot_metrics_and_eval_only_repeats_them(tmp_path):
    overrides = [
        "task=alpaca",
        "model=tiny_llama",
        "method=lora",
        "method.target_modules=[q_proj,v_proj]",
        "task.max_train_samples=8",
        "task.max_eval_samples=2",
        "task.max_new_tokens=3",
        "task.max_prompt_tokens=64",
        "task.max_target_tokens=16",
        "task.zero_shot=[arc_easy,boolq]",
        "task.zero_shot_limit=2",
    ]
    results = run_experiment(tiny_config(tmp_path / "run", *overrides))
    final = results["final_eval"]
    assert results["main_metric"] == "zero_shot/acc"
    keys = {"arc_easy/acc", "arc_easy/acc_norm", "boolq/acc", "zero_shot/acc", "zero_shot/acc_norm", "rougeL"}
    assert keys <= set(final)
    again = run_experiment(
        compose_config(
            [
                "progress_bar=false",
                "eval_only=true",
                f"load_from={tmp_path / 'run'}",
                f"output_dir={tmp_path / 'e'}",
            ]
        )
    )
    assert {k: again["eval"][k] for k in keys} == pytest.approx({k: final[k] for k in keys})


def test_zero_shot_with_an_encoder_decoder_is_refused(tmp_path):
    overrides = ["task=alpaca", "model=tiny_bart", "task.zero_shot=[rte]", "task.max_train_samples=4"]
    with pytest.raises(ConfigError, match="encoder-decoder"):
        run_experiment(tiny_config(tmp_path, *overrides))


def test_spsft_table6_preset_is_the_papers_setting():
    for method, rank, lr in (("lora_llm", 64, 1e-4), ("spsft_llm", 128, 2e-5)):
        cfg = compose_config(["experiment=spsft_table6", f"method={method}"])
        assert cfg.task.name == "alpaca" and cfg.task.max_train_samples == 256
        assert list(cfg.task.zero_shot) == [
            "arc_challenge",
            "arc_easy",
            "boolq",
            "hellaswag",
            "openbookqa",
            "rte",
            "winogrande",
        ]
        assert cfg.method.rank == rank and cfg.schedule.lr == lr and cfg.schedule.epochs == 5
        assert (
            cfg.schedule.warmup_ratio == 0.03
            and cfg.task.max_prompt_tokens + cfg.task.max_target_tokens == 2048
        )
    lora = compose_config(["experiment=spsft_table6", "method=lora_llm"]).method
    assert (lora.alpha, lora.dropout, lora.target_modules) == (16, 0.1, "all-linear")
