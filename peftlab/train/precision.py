"""Mixed precision: base weights in ``model.dtype``, trained tensors and optimizer state in fp32, the
forward passes autocast, and (fp16) a gradient scaler.

Trained tensors stay fp32 because AdamW updates of size lr * ~1 vanish in a bf16 weight (8 bits of
mantissa: 1 + 2^-9 rounds to 1), and their Adam moments would be bf16 too. The forwards then mix fp32
trained tensors with bf16/fp16 base weights, which only autocast can do, so a low-precision base always
autocasts to its own dtype, even with ``schedule.precision=fp32``. fp16 gradients underflow without
loss scaling; ``torch.amp.GradScaler`` scales the loss, unscales the gradients before the method hooks
and clipping read them, and skips the optimizer step when they overflowed (counted as skipped steps).
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from peftlab.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP16_MAX = 65504.0


def keep_trained_fp32(model: nn.Module) -> int:
    """Cast every trainable parameter that is not fp32 to fp32 (in place); returns how many were cast."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


def autocast_dtype(precision: str, model_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype forwards autocast to: ``precision``'s, or the base's own when it is bf16/fp16 (fp32
    trained tensors meet the base weights in it); None: no autocast."""
    if precision not in PRECISIONS:
        allowed = ", ".join(PRECISIONS)
        raise ConfigError(f"schedule.precision={precision!r} is not allowed; allowed: {allowed}")
    wanted = PRECISIONS[precision]
    if wanted == torch.float32 and model_dtype != torch.float32:
        return model_dtype
    if wanted != torch.float32 and model_dtype not in (torch.float32, wanted):
        raise ConfigError(
            f"schedule.precision={precision} with model.dtype={model_dtype}: the base weights are in another "
            f"low-precision dtype; allowed: schedule.precision=fp32 (autocast to the base's dtype) or the "
            f"precision of model.dtype"
        )
    return None if wanted == torch.float32 else wanted


def set_matmul_precision(matmul: str, device: torch.device) -> str:
    """fp32 matmuls on CUDA at ``matmul`` (``schedule.matmul_precision``: high lets them run in TF32);
    returns the precision in effect (CPU: untouched, torch's own)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision(matmul)
    return torch.get_float32_matmul_precision()


class Precision:
    """Autocast, backward and optimizer step of one run's precision (see the module docstring)."""

    def __init__(
        self, precision: str, model_dtype: torch.dtype, device: torch.device, matmul: str = "highest"
    ) -> None:
        self.dtype = autocast_dtype(precision, model_dtype)
        self.device = device
        self.matmul = set_matmul_precision(matmul, device)
        fp16 = self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler(device.type) if fp16 else None
        self.skipped_steps = 0
        if self.dtype is not None:
            log.info("forwards autocast to %s (trained tensors and optimizer state fp32)", self.dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> bool:
        """Bring scaled gradients back to their true size; False when they overflowed (step skipped).
        Without a scaler: True, and no host sync."""
        if self.scaler is None:
            return True
        self.scaler.unscale_(optimizer)
        grads = [p.grad for p in params if p.grad is not None]
        return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()) if grads else True

    def step(self, optimizer: torch.optim.Optimizer, finite: bool) -> None:
        """The optimizer step (the scaler skips it after an overflow and lowers its scale)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()
        self.skipped_steps += not finite

    def diverged_hint(self) -> str:
        """What a non-finite loss most likely means in this precision."""
        if self.dtype == torch.float16:
            return (
                f"in fp16 the activations overflow above {FP16_MAX:g}: this is the dtype, not the learning "
                "rate; use model.dtype=bfloat16 / schedule.precision=bf16 (same range as fp32) or fp32"
            )
        return "lower schedule.lr, set schedule.max_grad_norm, or check the data"


def base_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the frozen base weights (the model's most common floating dtype by elements)."""
    sizes: dict[torch.dtype, int] = {}
    for param in model.parameters():
        if param.is_floating_point():
            sizes[param.dtype] = sizes.get(param.dtype, 0) + param.numel()
    return max(sizes, key=sizes.__getitem__) if sizes else torch.float32
