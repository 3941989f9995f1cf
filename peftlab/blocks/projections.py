"""Frozen random projections shared by many low-rank layers and regenerated from a seed (VeRA/ELoRA)."""

from __future__ import annotations

import torch
from torch import nn


class FixedProjections(nn.Module):
    """A frozen random pair A (rank x in), B (out x rank), regenerated from a seed (VeRA/ELoRA).

    Drawn as peft's VeRA draws it: uniform(-sqrt(6 / fan_in), sqrt(6 / fan_in)) (kaiming-uniform with
    a=0), A then B, from one ``torch.Generator`` seeded with ``seed``. Layers slice ``A[:, :in]`` and
    ``B[:out, :]``. The buffers are not part of the state dict: the seed is the checkpoint.
    """

    def __init__(
        self,
        rank: int,
        in_features: int,
        out_features: int,
        seed: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.rank, self.seed = rank, seed
        generator = torch.Generator().manual_seed(seed)  # on the CPU: the same pair on every device
        a = torch.empty(rank, in_features, dtype=torch.float32, device="cpu")
        b = torch.empty(out_features, rank, dtype=torch.float32, device="cpu")
        nn.init.kaiming_uniform_(a, a=0, generator=generator)
        nn.init.kaiming_uniform_(b, a=0, generator=generator)
        self.register_buffer("A", a.to(device, dtype), persistent=False)
        self.register_buffer("B", b.to(device, dtype), persistent=False)
