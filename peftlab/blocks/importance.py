"""Importance / sensitivity scores computed from gradients, shared by the methods that freeze or prune.

Updates run as ``torch._foreach_*`` calls over cached lists of the scored tensors, so a step costs a
few fused kernels, not a Python loop over parameters.
"""

from __future__ import annotations

import torch

SENSITIVITIES = ("grad", "weight_grad", "grad_over_weight")


def sensitivity(params: list[torch.Tensor], kind: str, eps: float = 1e-8) -> list[torch.Tensor]:
    """|g| (``grad``), |p ⊙ g| (``weight_grad``) or |g| / max(|p|, eps) (``grad_over_weight``)."""
    grads = [p.grad for p in params]
    if kind == "grad":
        return torch._foreach_abs(grads)
    if kind == "weight_grad":
        return torch._foreach_abs(torch._foreach_mul(grads, params))
    if kind == "grad_over_weight":
        floor = torch._foreach_clamp_min(torch._foreach_abs(params), eps)
        return torch._foreach_div(torch._foreach_abs(grads), floor)
    raise ValueError(f"unknown sensitivity {kind!r}; allowed: {', '.join(SENSITIVITIES)}")


class SmoothedSensitivity:
    """AFLoRA's freezing score (Eqs. 2-4) for a set of tensors, of which some are still ``active``.

    Each step the sensitivity of the active tensors is summed into a window; every ``window`` steps its
    mean I updates I_bar = b1 I_bar + (1 - b1) I, U = |I - I_bar|, U_bar = b2 U_bar + (1 - b2) U. The
    score of a tensor is mean(I_bar ⊙ U_bar).
    """

    def __init__(self, params: list[torch.Tensor], kind: str, beta1: float, beta2: float, window: int):
        if kind not in SENSITIVITIES:
            raise ValueError(f"unknown sensitivity {kind!r}; allowed: {', '.join(SENSITIVITIES)}")
        self.params, self.kind = params, kind
        self.beta1, self.beta2, self.window = beta1, beta2, window
        self.window_sum = [torch.zeros_like(p) for p in params]
        self.i_bar = [torch.zeros_like(p) for p in params]
        self.u_bar = [torch.zeros_like(p) for p in params]
        self.steps_in_window = 0
        self.updates = 0
        self.set_active(list(range(len(params))))

    def set_active(self, indices: list[int]) -> None:
        """Score only these tensors from now on (the others were frozen)."""
        self.active = list(indices)
        self._params = [self.params[i] for i in self.active]
        self._sums = [self.window_sum[i] for i in self.active]
        self._i_bar = [self.i_bar[i] for i in self.active]
        self._u_bar = [self.u_bar[i] for i in self.active]

    def accumulate(self) -> None:
        """Add this step's sensitivity of the active tensors (their ``.grad`` is set)."""
        if self.active:
            torch._foreach_add_(self._sums, sensitivity(self._params, self.kind))
        self.steps_in_window += 1

    def window_full(self) -> bool:
        return self.steps_in_window >= self.window

    def update(self) -> None:
        """Close the window: fold its mean into the EMAs of the active tensors."""
        if self.active:
            i_now = torch._foreach_div(self._sums, float(self.steps_in_window))
            torch._foreach_lerp_(self._i_bar, i_now, 1.0 - self.beta1)  # b1 * I_bar + (1 - b1) * I
            u_now = torch._foreach_abs(torch._foreach_sub(i_now, self._i_bar))
            torch._foreach_lerp_(self._u_bar, u_now, 1.0 - self.beta2)
            torch._foreach_zero_(self._sums)
        self.steps_in_window = 0
        self.updates += 1

    def element_scores(self, index: int) -> torch.Tensor:
        return self.i_bar[index] * self.u_bar[index]

    def scores(self, indices: list[int]) -> torch.Tensor:
        """mean(I_bar ⊙ U_bar) of each tensor in ``indices``, as one tensor."""
        return torch.stack([self.element_scores(i).mean() for i in indices])

    def state_dict(self) -> dict:
        return {
            "window_sum": self.window_sum,
            "i_bar": self.i_bar,
            "u_bar": self.u_bar,
            "active": self.active,
            "steps_in_window": self.steps_in_window,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("window_sum", "i_bar", "u_bar"):
            for own, saved in zip(getattr(self, name), state[name], strict=True):
                own.copy_(saved)
        self.steps_in_window, self.updates = state["steps_in_window"], state["updates"]
        self.set_active(state["active"])
