"""Importance / sensitivity scores computed from gradients, shared by the methods that freeze or prune.

Updates run as ``torch._foreach_*`` calls over cached lists of the scored tensors, so a step costs a
few fused kernels, not a Python loop over parameters.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from peftlab import distributed
from peftlab.errors import ConfigError

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


# -- per-row (output neuron) scores: which rows of a weight matter, before any training ---------------


def l2_row_scores(weight: torch.Tensor) -> torch.Tensor:
    """||w_i||_2 of every output row i (a conv's output channel counts as a row)."""
    return weight.detach().reshape(weight.shape[0], -1).float().norm(dim=1)


def taylor_row_scores(
    weight: torch.Tensor,
    grad: torch.Tensor,
    bias: torch.Tensor | None = None,
    bias_grad: torch.Tensor | None = None,
) -> torch.Tensor:
    """First-order Taylor importance of every row: sum_j |w_ij g_ij| (+ |b_i g_i| when there is a bias),
    as Torch-Pruning's TaylorImportance scores an output channel."""
    scores = (weight.detach() * grad).abs().reshape(weight.shape[0], -1).float().sum(1)
    if bias is not None and bias_grad is not None:
        scores = scores + (bias.detach() * bias_grad).abs().float()
    return scores


QUANTILE_LEVELS = 11  # 0%, 10%, ..., 100%


def quantile_mean(per_class: torch.Tensor) -> torch.Tensor:
    """SPSFT's Quantile-Mean aggregation (Eq. 7): per_class is (classes, rows); returns, per row, the mean
    of the 0,10,...,100% quantiles (linear interpolation, as torch/numpy) over the classes."""
    levels = torch.linspace(0, 1, QUANTILE_LEVELS, dtype=per_class.dtype, device=per_class.device)
    return torch.quantile(per_class, levels, dim=0).mean(0)


def mean_gradients(
    model: torch.nn.Module, params: list[torch.Tensor], batches: list[dict[str, torch.Tensor]]
) -> list[torch.Tensor]:
    """d(mean loss over every example of ``batches``)/d p for each p in ``params``.

    Runs the model in eval mode (no dropout) with only ``params`` requiring grad, so nothing else gets a
    gradient; requires_grad flags, ``.grad`` and the train/eval mode are restored afterwards.
    """
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval()
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    examples = 0
    try:
        for batch in batches:
            n = len(batch["labels"])
            if n:
                with _base_autocast(params):
                    loss = model(**batch).loss
                (loss.float() * n).backward()
            examples += n
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        # data-parallel: every rank's share; on the parameters' device, as NCCL takes only CUDA tensors
        total = distributed.all_reduce_sum(torch.tensor(float(examples), device=params[0].device))
        if not total:
            raise ValueError("no examples to compute gradients on")
        for grad in grads:
            distributed.all_reduce_sum(grad)
        return [grad / total for grad in grads]
    finally:
        for p in params:
            p.grad = None
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)


def _base_autocast(params: list[torch.Tensor]) -> contextlib.AbstractContextManager:
    """Autocast to the scored weights' dtype when it is bf16 / fp16, as the training loop's forwards
    autocast for a low-precision base (``train/precision.py``): fp32 inputs (images) and fp32 tensors
    then meet bf16 weights; none for fp32 weights."""
    dtype = params[0].dtype
    if dtype not in (torch.bfloat16, torch.float16):
        return contextlib.nullcontext()
    return torch.autocast(device_type=params[0].device.type, dtype=dtype)


# -- Taylor scores of every row of whole layers, from mean gradients (SPSFT) -------------------------


def _weights_and_biases(layers: dict[str, nn.Module]) -> list[torch.Tensor]:
    params = []
    for layer in layers.values():
        params.append(layer.weight)
        if layer.bias is not None:
            params.append(layer.bias)
    return params


def _row_scores_from_grads(
    layers: dict[str, nn.Module], grads: list[torch.Tensor], with_bias: bool = True
) -> dict[str, torch.Tensor]:
    scores, it = {}, iter(grads)
    for name, layer in layers.items():
        weight_grad = next(it)
        bias_grad = next(it) if layer.bias is not None else None
        bias = layer.bias if with_bias else None
        scores[name] = taylor_row_scores(layer.weight, weight_grad, bias, bias_grad)
    return scores


def taylor_scores(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: list[dict[str, torch.Tensor]],
    with_bias: bool = True,
) -> dict[str, torch.Tensor]:
    """Taylor importance of every row, from the mean gradient over ``batches``; ``with_bias=False``
    leaves the |b g_b| term out (``taylor_bias``)."""
    grads = mean_gradients(model, _weights_and_biases(layers), batches)
    return _row_scores_from_grads(layers, grads, with_bias)


def class_quantile_mean_scores(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: list[dict[str, torch.Tensor]],
    num_labels: int,
    with_bias: bool = True,
) -> dict[str, torch.Tensor]:
    """Class-aware Quantile-Mean Taylor (Eq. 7): a Taylor score per class from the gradient of that
    class's mean loss, then per row the mean of the 0,10,...,100% quantiles over the classes present
    (SPSFT).
    One class at a time, each from fresh gradients (the official code lets gradients accumulate from
    class to class, so a later class's score also holds the earlier ones'); memory holds one set."""
    per_class: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    device = next(iter(layers.values())).weight.device  # the collective's (NCCL: CUDA only)
    for label in range(num_labels):
        subsets = [_rows_with_label(b, label) for b in batches]
        subsets = [b for b in subsets if len(b["labels"])]
        count = torch.tensor(float(sum(len(b["labels"]) for b in subsets)), device=device)
        present = distributed.all_reduce_sum(count)
        if not present:  # the class is absent from every rank's share of the batches
            continue
        for name, scores in taylor_scores(model, layers, subsets, with_bias).items():
            per_class[name].append(scores)
    if not per_class or not next(iter(per_class.values())):
        raise ConfigError("class-aware (qm_taylor) scores: the calibration batches hold no labelled example")
    return {name: quantile_mean(torch.stack(rows)) for name, rows in per_class.items()}


def _rows_with_label(batch: dict[str, torch.Tensor], label: int) -> dict[str, torch.Tensor]:
    keep = batch["labels"] == label
    return {k: v[keep] for k, v in batch.items()}


# -- PEFT-module and rank importance (Light-PEFT's estimation) -----------------------------------------


def rank_taylor_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """First-order Taylor importance of each rank of a low-rank pair (A: rank x in, B: out x rank), from
    their current ``.grad``: |mean_in(A ⊙ dA)| + |mean_out(B ⊙ dB)| (Light-PEFT); None without gradients."""
    if a.grad is None or b.grad is None:
        return None
    with torch.no_grad():
        score = (a * a.grad).mean(1).abs() + (b * b.grad).mean(0).abs()
        return torch.nan_to_num(score, nan=0.0, posinf=0.0, neginf=0.0)


def output_change_sums(
    output: torch.Tensor, base: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of ||ΔW x|| / ||W x|| over the non-padding tokens, their number): sums add up over the
    micro-batches of a step (and over a recomputed forward, which doubles both), so their ratio is the
    whole batch's mean."""
    with torch.no_grad():
        ratio = torch.nan_to_num((output - base).norm(dim=-1) / base.norm(dim=-1).clamp_min(1e-12), nan=0.0)
        if attention_mask is not None and attention_mask.shape == ratio.shape:
            return (ratio * attention_mask).sum().float(), attention_mask.sum().float()
        return ratio.sum().float(), torch.tensor(float(ratio.numel()), device=ratio.device)
