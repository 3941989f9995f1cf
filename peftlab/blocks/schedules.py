"""Schedules that methods share: the cubic freezing/pruning fraction of AdaLoRA/AFLoRA."""

from __future__ import annotations


def cubic_fraction(step: int, total_steps: int, initial_steps: int, final_steps: int) -> float:
    """AFLoRA Eq. 5: r(t) = 0 before t_i, 1 - (1 - (t - t_i) / (T - t_i - t_f))^3 until T - t_f, then 1."""
    if step < initial_steps:
        return 0.0
    ramp = total_steps - initial_steps - final_steps
    if step >= total_steps - final_steps or ramp <= 0:
        return 1.0
    return 1.0 - (1.0 - (step - initial_steps) / ramp) ** 3
