"""Language models for generation tasks, in the same shape as the classifier: ``backbone`` (the
transformer stack that methods adapt), ``head`` (what a task trains on top: nothing here) and the output
projection ``lm_head`` (tied to the embeddings or not; trained only by full fine-tuning).

The loss is next-token cross-entropy on the positions whose label is not -100 (the answer or summary);
only those hidden states go through the vocabulary projection, which for a 49k vocabulary is a large
part of a small model's compute. Greedy decoding with a KV cache is done here rather than by
``generate`` so that it runs on the wrapped (adapted, pruned) backbone and stays easy to check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from peftlab.models.heads import ModelOutput

IGNORE_INDEX = -100


class NoHead(nn.Module):
    """An empty task head: language modelling reuses the pretrained output projection."""


class CausalLM(nn.Module):
    """Decoder-only LM (Llama, Mistral, Qwen2, ...): prompt and target in one sequence."""

    is_encoder_decoder = False

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.backbone = lm.get_decoder()
        self.lm_head = lm.get_output_embeddings()
        self.head = NoHead()
        self._transformers_model = (lm,)  # in a tuple: not a submodule (no second copy in state_dict)

    @property
    def transformers_model(self) -> PreTrainedModel:
        """The transformers model this wraps; it holds the same (adapted, pruned) modules, so evaluation
        libraries that expect a transformers model (lm-evaluation-harness) see what training changed."""
        return self._transformers_model[0]

    @property
    def config(self):
        return self.backbone.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        """``position_ids`` given: a packed batch (peftlab/tasks/packing.py); its sequences are isolated
        by their restarting positions, which transformers reads only without an attention mask."""
        if position_ids is not None:
            attention_mask = None
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        hidden = hidden.last_hidden_state
        if labels is None:
            return ModelOutput(logits=self.lm_head(hidden))
        # position t predicts token t+1
        return ModelOutput(logits=None, loss=_token_loss(hidden[:, :-1], labels[:, 1:], self.lm_head))

    @staticmethod
    def count_targets(labels: torch.Tensor) -> int:
        """The target tokens the loss averages over (gradient accumulation weighs micro-batches by them)."""
        return int((labels[:, 1:] != IGNORE_INDEX).sum())

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, eos_token_id: int
    ) -> torch.Tensor:
        """Greedy continuation of LEFT-padded prompts: (batch, <= max_new_tokens) new token ids, each row
        filled with ``eos_token_id`` after its first end-of-sequence token."""
        mask = attention_mask
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)  # left padding: real tokens count from 0
        out = self.backbone(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        logits = self.lm_head(out.last_hidden_state[:, -1])
        step_positions = positions[:, -1:]

        def step(token: torch.Tensor, cache, mask: torch.Tensor, i: int, rows: torch.Tensor):
            out = self.backbone(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=step_positions[rows] + i + 1,
                past_key_values=cache,
                use_cache=True,
            )
            return self.lm_head(out.last_hidden_state[:, -1]), out.past_key_values

        return _greedy(logits, out.past_key_values, mask, step, max_new_tokens, eos_token_id)


class Seq2SeqLM(nn.Module):
    """Encoder-decoder LM (BART, T5): the prompt goes to the encoder, the target is decoded."""

    is_encoder_decoder = True

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.backbone = _encoder_decoder_stack(lm)
        self.lm_head = lm.get_output_embeddings()
        self.head = NoHead()
        bias = getattr(lm, "final_logits_bias", None)  # BART adds a (zero, frozen) bias to the logits
        self.register_buffer("final_logits_bias", bias.detach().clone() if bias is not None else None)
        config = lm.config
        # T5 with tied embeddings scales the decoder output before the projection
        self.output_scale = (
            config.d_model**-0.5
            if config.model_type in ("t5", "mt5") and getattr(config, "tie_word_embeddings", True)
            else 1.0
        )
        self.start_token_id = config.decoder_start_token_id
        self.pad_token_id = config.pad_token_id

    @property
    def config(self):
        return self.backbone.config

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden * self.output_scale if self.output_scale != 1.0 else hidden)
        return logits + self.final_logits_bias if self.final_logits_bias is not None else logits

    def decoder_inputs(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the labels shifted right behind the decoder start token (-100 -> pad)."""
        start = torch.full_like(labels[:, :1], self.start_token_id)
        shifted = torch.cat([start, labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == IGNORE_INDEX, self.pad_token_id)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None
    ) -> ModelOutput:
        if labels is None:
            raise ValueError("Seq2SeqLM.forward needs labels (teacher forcing); use generate() to decode")
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=self.decoder_inputs(labels),
            use_cache=False,
        )
        return ModelOutput(logits=None, loss=_token_loss(out.last_hidden_state, labels, self.project))

    @staticmethod
    def count_targets(labels: torch.Tensor) -> int:
        """The target tokens the loss averages over (gradient accumulation weighs micro-batches by them)."""
        return int((labels != IGNORE_INDEX).sum())

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, eos_token_id: int
    ) -> torch.Tensor:
        """Greedy decoding of the targets of (any-side padded) source sequences."""
        encoded = self.backbone.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        states = [encoded.last_hidden_state]  # the rows still decoding (re-sliced only when rows finish)
        start = torch.full((input_ids.shape[0], 1), self.start_token_id, device=input_ids.device)

        def decode(token: torch.Tensor, cache, mask: torch.Tensor, i: int, rows: torch.Tensor):
            if len(rows) != len(states[0]):
                states[0] = encoded.last_hidden_state[rows]
            out = self.backbone(
                encoder_outputs=(states[0],),
                attention_mask=mask,
                decoder_input_ids=token[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            return self.project(out.last_hidden_state[:, -1]), out.past_key_values

        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        logits, cache = decode(start[:, 0], None, attention_mask, -1, rows)
        return _greedy(logits, cache, attention_mask, decode, max_new_tokens, eos_token_id, grow_mask=False)


def _encoder_decoder_stack(lm: PreTrainedModel) -> nn.Module:
    """The model's encoder-decoder without its LM head (BART: ``lm.model``). T5 keeps encoder and decoder
    on the LM itself, so a T5Model shell (built on the meta device, no weights) is given its modules."""
    base = lm.base_model
    if base is not lm:
        return base
    from transformers import T5Model

    if lm.config.model_type not in ("t5", "mt5"):
        raise TypeError(f"do not know where the encoder-decoder stack of {type(lm).__name__} is")
    with torch.device("meta"):
        shell = T5Model(lm.config)
    shell.shared, shell.encoder, shell.decoder = lm.shared, lm.encoder, lm.decoder
    return shell


def _token_loss(hidden: torch.Tensor, labels: torch.Tensor, project) -> torch.Tensor:
    """Mean cross-entropy over the positions with a label, projecting only those hidden states."""
    keep = labels != IGNORE_INDEX
    logits = project(hidden[keep])
    return F.cross_entropy(logits.float(), labels[keep])


def _greedy(logits, cache, mask, step, max_new_tokens: int, eos_token_id: int, grow_mask: bool = True):
    """Greedy loop shared by both model kinds. Rows that wrote eos leave the batch (their cache rows are
    dropped), so a long answer does not make the finished rows compute on. ``step(token, cache, mask, i,
    rows)`` runs one decoding step for the original rows ``rows`` and returns (logits, cache)."""
    batch = logits.shape[0]
    out = torch.full((batch, max_new_tokens), eos_token_id, dtype=torch.long, device=logits.device)
    rows = torch.arange(batch, device=logits.device)
    written = 0
    for i in range(max_new_tokens):
        token = logits.argmax(-1)
        out[rows, i] = token
        written = i + 1
        finished = token == eos_token_id
        if i + 1 == max_new_tokens:
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            rows, token, mask = rows[keep], token[keep], mask[keep]
            cache.batch_select_indices(keep)
        if grow_mask:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        logits, cache = step(token, cache, mask, i, rows)
    return out[:, :written]
