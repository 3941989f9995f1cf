"""FLOPs per step do not depend on the attention kernel: torch's counter has no formula for the CPU's
fused attention (``_scaled_dot_product_flash_attention_for_cpu``: 0 FLOPs) while CUDA's kernels are
counted, so CPU tables under-counted attention. Eager attention (bmm) is the reference."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from peftlab.config import compose_config
from peftlab.models import build_model
from peftlab.train.efficiency import count_flops

# no attention dropout: CPU SDPA then runs its fused kernel in training too (with dropout, the math path)
NO_DROPOUT = ["+model.config.attention_probs_dropout_prob=0.0"]


@pytest.fixture
def model_and_batch():
    torch.manual_seed(0)
    model, tokenizer = build_model(compose_config([*TINY, *NO_DROPOUT]).model, num_labels=2)
    enc = tokenizer(
        ["a small test sentence", "another one, a bit longer than the first"],
        ["paired text", "more"],
        padding=True,
        return_tensors="pt",
    )
    return model, {**enc, "labels": torch.tensor([0, 1])}


def flops_with(model, impl: str, fn) -> int:
    model.backbone.set_attn_implementation(impl)
    return count_flops(fn)


@pytest.mark.parametrize("mode", ["forward", "train_step"])
def test_flops_are_the_same_with_eager_and_sdpa_attention(model_and_batch, mode):
    model, batch = model_and_batch
    if mode == "forward":
        model.eval()
        fn = lambda: model(**batch)  # noqa: E731
    else:
        model.train()
        fn = lambda: model(**batch).loss.backward()  # noqa: E731
    eager = flops_with(model, "eager", fn)
    sdpa = flops_with(model, "sdpa", fn)
    assert eager > 0 and sdpa == eager


def test_the_cpu_fused_kernel_runs_in_this_check(model_and_batch):
    """The parity above is about the fused kernel (not SDPA's math fallback, which is bmm anyway)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = set()

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(func.overloadpacket)
            return func(*args, **(kwargs or {}))

    model, batch = model_and_batch
    model.train()
    model.backbone.set_attn_implementation("sdpa")
    with Ops():
        model(**batch).loss.backward()
    aten = torch.ops.aten
    assert aten._scaled_dot_product_flash_attention_for_cpu in seen
    assert aten._scaled_dot_product_flash_attention_for_cpu_backward in seen
