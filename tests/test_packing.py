"""What padding-free packing of LM examples could rest on, on CPU, in the installed transformers: for
Llama-family decoders, sequences concatenated into one row with per-sequence ``position_ids`` (and no
attention mask, no cache) are isolated by a block-diagonal mask under both SDPA and eager attention, so
the summed token loss equals the unpadded one; OPT derives positions from the attention mask and lets
the sequences see each other, so it cannot be packed this way (docs/performance.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peftlab.config import compose_config
from peftlab.models import build_model


def token_loss_sum(model, ids: torch.Tensor, **inputs) -> torch.Tensor:
    """Summed next-token cross-entropy of a row (every position predicts the next token of its row)."""
    hidden = model.backbone(input_ids=ids[None], use_cache=False, **inputs).last_hidden_state[0]
    return F.cross_entropy(model.lm_head(hidden[:-1]).float(), ids[1:], reduction="sum")


def losses(name: str, attention: str) -> tuple[float, float]:
    model, _ = build_model(compose_config([f"model={name}"]).model, 0, "lm")
    model.eval()
    model.backbone.config._attn_implementation = attention
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(5, 1000, (n,), generator=generator) for n in (7, 5, 9)]
    with torch.no_grad():
        alone = sum(token_loss_sum(model, r, attention_mask=torch.ones_like(r)[None]) for r in rows)
        positions = torch.cat([torch.arange(len(r)) for r in rows])[None]
        hidden = model.backbone(
            input_ids=torch.cat(rows)[None], position_ids=positions, attention_mask=None, use_cache=False
        ).last_hidden_state[0]
        ends = torch.cumsum(torch.tensor([len(r) for r in rows]), 0).tolist()
        starts = [0, *ends[:-1]]
        packed = sum(
            F.cross_entropy(
                model.lm_head(hidden[s : e - 1]).float(), torch.cat(rows)[s + 1 : e], reduction="sum"
            )
            for s, e in zip(starts, ends, strict=True)
        )
    return float(alone), float(packed)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_llama_packed_rows_give_the_unpacked_loss(attention):
    alone, packed = losses("tiny_llama", attention)
    assert packed == pytest.approx(alone, rel=0, abs=1e-5 * max(1.0, abs(alone)))


def test_opt_packed_rows_are_not_isolated():
    alone, packed = losses("tiny_opt", "sdpa")
    assert abs(packed - alone) > 1e-3
