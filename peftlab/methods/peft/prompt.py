"""Prompt-style peft tuners (prompt tuning, P-tuning, prefix tuning) inside peftlab's models.

peft's virtual tokens come before the real ones: prompt tuning and P-tuning prepend ``n`` embeddings to the
input, prefix tuning ``n`` keys and values to every attention layer. The backbone's forward is replaced so
that the model wrappers (classifier, causal LM) see hidden states of the REAL tokens only:

- the attention mask gets ``n`` ones in front (every real token attends to the virtual ones);
- position ids, when given (left-padded generation), are shifted by ``n``; the virtual ones take 0..n-1;
- token type ids (BERT sentence pairs) get ``n`` zeros in front: virtual tokens belong to segment A;
- the ``n`` virtual positions are cut from ``last_hidden_state``: the head's pooling (mean over the real
  tokens by the task's mask; ``cls``/``pooler``: the first real token, [CLS]) and the LM loss never read
  them. They still shape every real token's state through attention.

With a key-value cache (generation steps after the first) the virtual tokens are already in the cache:
only the mask and positions are extended.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PREFIX = "PREFIX_TUNING"


def virtual_count(wrapped: Any) -> int:
    return int(wrapped.active_peft_config.num_virtual_tokens)


def _prepend(values: torch.Tensor | None, front: torch.Tensor) -> torch.Tensor | None:
    return None if values is None else torch.cat([front.to(values.dtype), values], dim=1)


class VirtualTokens:
    """The replacement forward of ``backbone``: peft's prompt of ``wrapped`` (the PeftModel around it)."""

    def __init__(self, backbone: nn.Module, wrapped: Any) -> None:
        self.forward = backbone.forward  # the backbone's own forward, bound
        self.wrapped = wrapped
        self.prefix = str(wrapped.active_peft_config.peft_type.value) == PREFIX

    def __call__(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> Any:
        if input_ids is None:
            raise ValueError(
                "peft's virtual tokens need input_ids (the prompt is prepended to their embeddings)"
            )
        n, batch = virtual_count(self.wrapped), input_ids.shape[0]
        front = input_ids.new_ones(batch, n)
        attention_mask = _prepend(attention_mask, front)
        cached = kwargs.get("past_key_values") is not None
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"] + n
        if self.prefix or cached:
            if not cached:
                kwargs["past_key_values"] = self.wrapped.get_prompt(batch_size=batch)
            return self.forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if kwargs.get("position_ids") is not None:
            start = torch.arange(n, device=input_ids.device).expand(batch, n)
            kwargs["position_ids"] = torch.cat([start, kwargs["position_ids"]], dim=1)
        if kwargs.get("token_type_ids") is not None:
            kwargs["token_type_ids"] = _prepend(kwargs["token_type_ids"], torch.zeros_like(front))
        embeds = self.wrapped.word_embeddings(input_ids)
        prompt = self.wrapped.get_prompt(batch_size=batch).to(embeds.dtype)
        out = self.forward(
            inputs_embeds=torch.cat([prompt, embeds], 1), attention_mask=attention_mask, **kwargs
        )
        out.last_hidden_state = out.last_hidden_state[:, n:]
        return out


def install(backbone: nn.Module, wrapped: Any) -> None:
    """Route ``backbone``'s forward through the virtual tokens of ``wrapped``."""
    backbone.forward = VirtualTokens(backbone, wrapped)
