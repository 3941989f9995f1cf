"""AdaLoRA's per-step work, where peft's docs put it: ``loss.backward(); optimizer.step();
model.base_model.update_and_allocate(step); optimizer.zero_grad()``. peftlab's loop clears the gradients
before ``after_step``, so ``after_backward`` keeps references to them (clipped in place, as peft's
allocator sees them under the HF Trainer) and ``after_step`` hands them back for the allocation. AdaLoRA's
orthogonality penalty, which ``AdaLoraModel.forward`` adds to a loss it sees, is the method's extra loss
(peftlab runs the backbone, not peft's forward)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def lora_parameters(wrapped: Any) -> list[tuple[str, nn.Parameter]]:
    """The parameters peft's rank allocator scores (``lora_`` and the adapter's name in theirs)."""
    name = wrapped.base_model.trainable_adapter_name
    return [(n, p) for n, p in wrapped.base_model.model.named_parameters() if "lora_" in n and name in n]


def orthogonal_penalty(wrapped: Any) -> torch.Tensor | None:
    """``orth_reg_weight`` x mean over A and B of ||P P^T - I||_F (A: P = A, B: P = B^T), as peft's."""
    base = wrapped.base_model
    weight = base.peft_config[base.trainable_adapter_name].orth_reg_weight
    terms = []
    for n, p in lora_parameters(wrapped):
        if "lora_A" in n or "lora_B" in n:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            terms.append(torch.norm(cov - torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device), p="fro"))
    return weight * torch.stack(terms).mean() if terms and weight else None


class Allocation:
    """The gradients of the step between ``after_backward`` and ``after_step``."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        self.grads: list[tuple[nn.Parameter, torch.Tensor | None]] = []

    def keep_gradients(self) -> None:
        self.grads = [(p, p.grad) for _, p in lora_parameters(self.wrapped)]

    def allocate(self, step: int) -> None:
        """peft's ``update_and_allocate(step)`` with this step's gradients in ``.grad``, then cleared."""
        if not self.grads:  # a skipped (fp16 overflow) step: nothing to score
            return
        for p, grad in self.grads:
            p.grad = grad
        try:
            self.wrapped.base_model.update_and_allocate(step)
        finally:
            for p, _ in self.grads:
                p.grad = None
            self.grads = []

    def ranks(self) -> dict[str, int]:
        """The rank each layer keeps now: the kept entries of peft's ``rank_pattern`` once the budget has
        acted, ``init_r`` (lora_E's length) before (lora_E starts at zero, so its non-zeros say nothing)."""
        pattern = self.wrapped.peft_config["default"].rank_pattern or {}
        return {
            n: int(sum(pattern[n])) if n in pattern else p.shape[0]
            for n, p in lora_parameters(self.wrapped)
            if "lora_E" in n
        }

    def state_dict(self) -> dict[str, Any]:
        """The allocator's scores and the rank pattern, for a bit-identical resume."""
        alloc, config = self.wrapped.base_model.rankallocator, self.wrapped.peft_config["default"]
        return {
            "ipt": dict(alloc.ipt),
            "exp_avg_ipt": dict(alloc.exp_avg_ipt),
            "exp_avg_unc": dict(alloc.exp_avg_unc),
            "rank_pattern": config.rank_pattern,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        alloc, config = self.wrapped.base_model.rankallocator, self.wrapped.peft_config["default"]
        alloc.ipt, alloc.exp_avg_ipt = dict(state["ipt"]), dict(state["exp_avg_ipt"])
        alloc.exp_avg_unc = dict(state["exp_avg_unc"])
        config.rank_pattern = state["rank_pattern"]
