"""Alpaca: Stanford's prompt templates with and without input, the loss only on the response (and eos),
the seeded random 256-instruction training subset, disjoint from the held-out evaluation records."""

from __future__ import annotations

from omegaconf import OmegaConf

from peftlab.config import compose_config
from peftlab.models import build_model
from peftlab.models.lm import IGNORE_INDEX
from peftlab.registry import TASKS
from peftlab.tasks.alpaca import alpaca_pair

WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nIdentify the odd one out.\n\n### Input:\nTwitter, Instagram, Telegram\n\n### Response:"
)
WITHOUT_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nGive three tips for staying healthy.\n\n### Response:"
)


def alpaca(**overrides):
    cfg = compose_config(["task=alpaca", "seed=3", *[f"task.{k}={v}" for k, v in overrides.items()]])
    return TASKS.get("alpaca")(cfg.task, None)


def prompt_text(pair) -> str:
    before, after = pair.prompt
    return before + pair.source + after


def test_prompts_are_stanford_alpacas_templates():
    records = alpaca()._records()
    assert len(records) == 52002
    with_input, without_input = alpaca_pair(records[5]), alpaca_pair(records[0])
    assert prompt_text(with_input) == WITH_INPUT and with_input.source == "Twitter, Instagram, Telegram"
    assert prompt_text(without_input) == WITHOUT_INPUT
    assert with_input.target == "Telegram"


def test_loss_only_on_the_response_and_the_cut_keeps_the_template():
    torch_cfg = compose_config(["model=tiny_llama"])
    model, tokenizer = build_model(torch_cfg.model, 0, "lm")
    task = alpaca(max_prompt_tokens=60, max_target_tokens=8)
    task.use_model(model)
    pair = alpaca_pair(
        {"instruction": "Summarise.", "input": "word " * 100, "output": "A short answer here."}
    )
    encoded = task.encode(pair, tokenizer)
    response = tokenizer(" A short answer here.", add_special_tokens=False).input_ids
    assert encoded["target"] == response + [tokenizer.sep_token_id]  # eos: [SEP] for this vocabulary
    assert len(encoded["prompt"]) == 60  # the input was cut ...
    prompt = tokenizer.decode(encoded["prompt"])
    assert prompt.startswith("below is an instruction") and prompt.endswith(
        "# # # response :"
    )  # ... not the template
    batch = next(iter(task.build_loader([pair], tokenizer, 1, 0, generator=None)))
    labels = batch["labels"][0].tolist()
    assert labels[:60] == [IGNORE_INDEX] * 60 and labels[60:] == encoded["target"]


def test_training_subset_is_random_seeded_and_disjoint_from_the_held_out_records():
    train = alpaca().load_split("train")
    again = alpaca().load_split("train")
    other = TASKS.get("alpaca")(OmegaConf.merge(alpaca().cfg, {"sample_seed": 4}), None).load_split("train")
    assert len(train) == 256 and train == again and train != other
    all_records = alpaca(max_train_samples="null").load_split("train")
    assert len(all_records) == 52002 - 521
    held_out = alpaca(max_eval_samples="null").load_split("validation")
    assert len(held_out) == 521 and len(alpaca().load_split("validation")) == 32
    assert not {(p.source, p.target) for p in train} & {(p.source, p.target) for p in held_out}
    positions = {(p.source, p.target): i for i, p in enumerate(all_records)}
    picked = sorted(positions[(p.source, p.target)] for p in train)
    assert picked[-1] - picked[0] > 40000  # drawn from the whole file, not its first 256
