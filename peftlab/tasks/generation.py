"""Generation tasks: train on (prompt, target) pairs with the loss on the target tokens only, evaluate by
greedy decoding and a text metric.

Decoder-only models see ``prompt + target + eos`` in one sequence (labels -100 on the prompt and the
padding); encoder-decoder models get the prompt as encoder input and the target as labels. Prompts are
built from a template with one ``{source}`` slot; when a prompt is too long, the source text is cut
(never the template), so the model always sees the instruction and the answer cue. Evaluation prompts
are LEFT-padded so that every row's continuation starts at the same position.
"""

from __future__ import annotations

import json
import logging
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from peftlab import checks, distributed
from peftlab.errors import ConfigError
from peftlab.models.lm import IGNORE_INDEX
from peftlab.tasks.base import HeldOutConfig, Task, TaskConfig, cut
from peftlab.tasks.batching import train_sampling
from peftlab.tasks.data_root import decode_problem
from peftlab.tasks.packing import check_packable, packed_batch
from peftlab.tasks.zero_shot import suite_from_task_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextPair:
    source: str  # fills the prompt template's {source}
    target: str  # what the model learns to write after the prompt
    reference: str  # what a prediction is scored against
    prompt: tuple[str, str] | None = (
        None  # this example's own text (before, after) the source; None: task.prompt
    )


def check_prompt(prompt: object) -> None:
    if not isinstance(prompt, str) or prompt.count("{source}") != 1:
        raise checks.refuse("task.prompt", prompt, "a template with '{source}' exactly once")


@dataclass
class GenerationConfig(TaskConfig):
    """``conf/task`` keys of prompt -> target tasks (GSM8k)."""

    prompt: str = "{source}"
    # zero-shot multiple-choice tasks scored at every evaluation (peftlab/tasks/zero_shot.py), e.g. [arc_easy]
    zero_shot: list[str] = field(default_factory=list)
    zero_shot_limit: int | None = None  # items per zero-shot task; null: all
    zero_shot_batch_size: int = 8
    zero_shot_missing: str = "error"  # error | skip: a listed task whose data is missing
    max_prompt_tokens: int = 256
    max_target_tokens: int = 256
    max_new_tokens: int = 256
    packing: bool = False  # training batches packed into rows, no padding (peftlab/tasks/packing.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prompt(self.prompt)
        checks.boolean("task.packing", self.packing)
        checks.integer("task.max_prompt_tokens", self.max_prompt_tokens, minimum=1)
        checks.integer("task.max_target_tokens", self.max_target_tokens, minimum=2)  # eos + one token
        checks.integer("task.max_new_tokens", self.max_new_tokens, minimum=1)
        checks.integer("task.zero_shot_limit", self.zero_shot_limit, minimum=1, optional=True)
        checks.integer("task.zero_shot_batch_size", self.zero_shot_batch_size, minimum=1)
        checks.choice("task.zero_shot_missing", self.zero_shot_missing, ("error", "skip"))


@dataclass
class HeldOutGenerationConfig(GenerationConfig, HeldOutConfig):
    """Generation tasks that hold out every ``eval_every_nth`` row of one file (CNN/DM)."""


def read_jsonl(path: Path, keys: tuple[str, ...], strings: bool = True) -> list[dict]:
    """Rows of a JSON-lines file; every row must be an object holding ``keys`` (strings, unless
    ``strings=False``: SuperGLUE's labels and nested answers). A bad row (invalid UTF-8 or JSON, a
    missing or non-string value) is an error naming ``file:line``."""
    rows = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ConfigError(f"{where}: {decode_problem(err)}") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{where}: not valid JSON ({err.msg})") from None
            missing = [k for k in keys if not isinstance(row, dict) or k not in row]
            if missing:
                raise ConfigError(f"{where}: row lacks keys {missing}; expected keys {list(keys)}")
            for key in keys if strings else ():
                if not isinstance(row[key], str):
                    raise ConfigError(f"{where}: {key} is {cut(json.dumps(row[key]))}; expected a string")
            rows.append(row)
    if not rows:
        raise ConfigError(f"{path} holds no rows")
    return rows


class GenerationTask(Task):
    """Prompt -> target text. Subclasses read the data and score predictions against references."""

    model_head = "lm"
    num_labels = 0
    config_class: ClassVar[type[TaskConfig]] = GenerationConfig

    def __init__(self, cfg, data_root):
        super().__init__(cfg, data_root)  # GenerationConfig checks task.prompt
        self.encoder_decoder = False
        self.tokenizer: PreTrainedTokenizerBase | None = None
        # zero-shot multiple-choice tasks scored at every evaluation (task.zero_shot; checked here, before
        # the model is built, so missing data fails before training)
        self.zero_shot = suite_from_task_config(self.config, data_root)

    def use_model(self, model: torch.nn.Module) -> None:
        super().use_model(model)
        self.encoder_decoder = bool(getattr(model, "is_encoder_decoder", False))
        if self.zero_shot is not None and self.encoder_decoder:
            raise ConfigError(
                "task.zero_shot scores a decoder-only model (lm-eval's causal LM); this model is an "
                "encoder-decoder: use a causal LM (smollm2_135m, tiny_llama, tiny_opt, llama2_7b) or "
                "task.zero_shot=[]"
            )
        if self.config.packing:
            check_packable(model.config)
        self._check_budgets()

    def _check_budgets(self) -> None:
        """Token budgets within the model's position table, when it has one (BART; not rotary Llama).
        An encoder-decoder embeds prompt and target apart; a decoder-only model sees them in one
        sequence (with a bos), and decodes after the prompt."""
        limit, cfg = self.position_limit, self.config
        if limit is None:
            return
        if self.encoder_decoder:
            keys = ("max_prompt_tokens", "max_target_tokens", "max_new_tokens")
            needs = {f"task.{k}": getattr(cfg, k) for k in keys}
        else:
            longest = cfg.max_prompt_tokens + 1 + max(cfg.max_target_tokens, cfg.max_new_tokens)
            needs = {"task.max_prompt_tokens + 1 + max(task.max_target_tokens, task.max_new_tokens)": longest}
        for key, value in needs.items():
            if value > limit:
                raise checks.refuse(key, value, f"at most {limit}, the positions this model embeds")

    @abstractmethod
    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """Metrics of decoded predictions against references."""

    # -- tokenising ----------------------------------------------------------------------------------
    def encode(self, example: TextPair, tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
        """``prompt`` ids (template with the source cut to fit ``max_prompt_tokens``) and ``target`` ids
        (cut to ``max_target_tokens``, eos last)."""
        cfg = self.config
        eos = eos_token_id(tokenizer)
        before, after = example.prompt or cfg.prompt.split("{source}")
        if self.encoder_decoder:  # the tokenizer's own special tokens on both sides, as BART/T5 expect
            prompt = tokenizer(
                before + example.source + after,
                truncation=True,
                max_length=cfg.max_prompt_tokens,
            ).input_ids
            target = tokenizer(
                text_target=example.target, truncation=True, max_length=cfg.max_target_tokens
            ).input_ids
            return {"prompt": prompt, "target": target}
        pieces = [
            tokenizer(text, add_special_tokens=False).input_ids for text in (before, example.source, after)
        ]
        budget = cfg.max_prompt_tokens - len(pieces[0]) - len(pieces[2])
        if budget < 1:
            raise ConfigError(f"task.max_prompt_tokens={cfg.max_prompt_tokens} leaves no room for the source")
        prompt = pieces[0] + pieces[1][:budget] + pieces[2]
        bos = tokenizer.bos_token_id
        if getattr(tokenizer, "add_bos_token", False) and bos is not None:
            prompt = [bos] + prompt
        target_text = example.target if example.target.startswith((" ", "\n")) else " " + example.target
        target = tokenizer(target_text, add_special_tokens=False).input_ids[: cfg.max_target_tokens - 1]
        return {"prompt": prompt, "target": target + [eos]}

    def build_loader(self, examples, tokenizer, batch_size, max_length, generator=None):
        """Training (``generator`` given): shuffled (input_ids, attention_mask, labels), or with
        ``task.packing`` each batch packed into rows of ``max_length`` (peftlab/tasks/packing.py).
        Evaluation: padded, plus left-padded ``prompt_ids``/``prompt_mask`` and the example ``index``.
        Unpacked, ``max_length`` is unused: prompt and target have their own budgets (task.max_*_tokens)."""
        self.tokenizer = tokenizer
        encoded = self.encoded(examples, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_id(tokenizer)
        packing = max_length if generator is not None and self.config.packing else None
        collate = _Collate(pad, self.encoder_decoder, with_prompts=generator is None, packing=packing)
        lengths = [len(e["prompt"]) + len(e["target"]) for e in encoded]
        loader = DataLoader(
            list(enumerate(encoded)),
            batch_size=batch_size,
            collate_fn=collate,
            **train_sampling(lengths, batch_size, generator, self.config.group_by_length),
        )
        loader.references = [e.reference for e in examples]  # type: ignore[attr-defined]
        return loader

    def encoded(self, examples: list[TextPair], tokenizer: PreTrainedTokenizerBase) -> list[dict]:
        """``encode`` of every example, through the token cache (``task.cache_tokens``)."""
        cfg = self.config
        settings = {
            "encoder_decoder": self.encoder_decoder,
            **{k: getattr(cfg, k) for k in ("prompt", "max_prompt_tokens", "max_target_tokens")},
        }

        def tokenize() -> dict[str, list[list[int]]]:
            pairs = [self.encode(e, tokenizer) for e in examples]
            return {"prompt": [p["prompt"] for p in pairs], "target": [p["target"] for p in pairs]}

        columns = self.token_ids(examples, tokenizer, settings, tokenize)
        return [{"prompt": p, "target": t} for p, t in zip(columns["prompt"], columns["target"], strict=True)]

    # -- evaluating ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, model, loader, device):
        """Teacher-forced loss on the targets, then greedy decoding scored by ``score``."""
        tokenizer = self.tokenizer
        assert tokenizer is not None, "build_loader sets the tokenizer"
        references = loader.references
        was_training = model.training
        model.eval()
        predictions: list[str] = [""] * len(references)
        loss_sum, token_count, generated, gen_time = 0.0, 0, 0, 0.0
        eos, budget = eos_token_id(tokenizer), self.config.max_new_tokens
        for batch in tqdm(loader, desc="generating", leave=False, disable=not self.progress_bar):
            batch = {k: v.to(device) for k, v in batch.items()}
            n_tokens = int((batch["labels"] != IGNORE_INDEX).sum())
            out = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
            loss_sum += float(out.loss) * n_tokens
            token_count += n_tokens
            start = time.perf_counter()
            with distributed.unsharded(model):  # FSDP: one all-gather per block, not one per token
                new = model.generate(batch["prompt_ids"], batch["prompt_mask"], budget, eos)
            rows = new.tolist()  # read to the host inside the clock: it waits for the device's decoding
            gen_time += time.perf_counter() - start
            for row, index in zip(rows, batch["index"].tolist(), strict=True):
                row = row[: row.index(eos) + 1] if eos in row else row
                generated += len(row)
                predictions[index] = tokenizer.decode(row, skip_special_tokens=True).strip()
        model.train(was_training)
        self.last_predictions = [
            {"prediction": p, "reference": r} for p, r in zip(predictions, references, strict=True)
        ]
        metrics = self.score(predictions, references)
        metrics["loss"] = loss_sum / max(token_count, 1)
        metrics["generated_tokens_per_s"] = generated / gen_time if gen_time else 0.0
        if self.zero_shot is not None:
            metrics.update(self.zero_shot.evaluate(model, tokenizer))
        return metrics

    def load_split(self, split: str) -> list[TextPair]:
        return self.limit(self.read_split(split), split)

    @abstractmethod
    def read_split(self, split: str) -> list[TextPair]:
        """Every example of ``split``."""


def eos_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """End of a target: the tokenizer's eos, or [SEP] for BERT-style vocabularies (tiny test models)."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return int(token_id)
    raise ConfigError(f"tokenizer {type(tokenizer).__name__} has no eos or sep token to end targets with")


class _Collate:
    """Pads a batch of encoded pairs (a class, not a closure, so DataLoader workers can pickle it)."""

    def __init__(
        self, pad_id: int, encoder_decoder: bool, with_prompts: bool, packing: int | None = None
    ) -> None:
        self.pad_id, self.encoder_decoder, self.with_prompts = pad_id, encoder_decoder, with_prompts
        self.packing = packing  # tokens per packed row; None: one padded row per example

    def __call__(self, items: list[tuple[int, dict[str, list[int]]]]) -> dict[str, torch.Tensor]:
        pairs = [item for _, item in items]
        if self.encoder_decoder:
            inputs = [p["prompt"] for p in pairs]
            labels = [p["target"] for p in pairs]
        else:
            inputs = [p["prompt"] + p["target"] for p in pairs]
            labels = [[IGNORE_INDEX] * len(p["prompt"]) + p["target"] for p in pairs]
        if self.packing is not None:
            return packed_batch(inputs, labels, self.packing, self.pad_id)
        input_ids, attention_mask = _pad(inputs, self.pad_id, left=False)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": _pad(labels, IGNORE_INDEX, left=False)[0],
        }
        if self.with_prompts:
            # decoder-only: left padding so generation continues every row at the same position
            prompt_ids, prompt_mask = _pad([p["prompt"] for p in pairs], self.pad_id, left=True)
            batch.update(prompt_ids=prompt_ids, prompt_mask=prompt_mask)
            batch["index"] = torch.tensor([index for index, _ in items])
        return batch


def _pad(rows: list[list[int]], fill: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), fill, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask
