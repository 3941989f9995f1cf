"""Trainable structure masks (Light-PEFT's estimation): one scalar per head unit and per FFN channel.

A head mask scales that head's slice of the attention output before the output projection, which is
the same as scaling its attention probabilities; an FFN mask scales one intermediate activation before
the FFN output projection. Both are applied by forward pre-hooks, so the model's own code is untouched,
and a mask of 0 computes exactly what the physically pruned model computes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from peftlab.blocks.structure import Block, num_channels, num_units


class StructureMasks(nn.Module):
    """``head[l, u]`` for head unit u of block l, ``ffn[l, c]`` for FFN channel c; all start at 1."""

    def __init__(self, backbone: nn.Module, blocks: list[Block]) -> None:
        super().__init__()
        self.blocks = blocks
        units = {num_units(backbone, b) for b in blocks}
        channels = {num_channels(backbone, b) for b in blocks}
        if len(units) != 1 or len(channels) != 1:
            raise ValueError("structure masks need every block to have the same number of heads and channels")
        device = next(backbone.parameters()).device
        self.head = nn.Parameter(torch.ones(len(blocks), units.pop(), device=device))
        self.ffn = nn.Parameter(torch.ones(len(blocks), channels.pop(), device=device))
        self._handles: list[RemovableHandle] = []

    def apply_to(self, backbone: nn.Module) -> None:
        """Register the pre-hooks that multiply the masks in."""
        for i, block in enumerate(self.blocks):
            width = block.heads_per_unit * block.head_dim
            self._handles.append(
                backbone.get_submodule(block.out).register_forward_pre_hook(self._scale(self.head, i, width))
            )
            self._handles.append(
                backbone.get_submodule(block.ffn_out).register_forward_pre_hook(self._scale(self.ffn, i, 1))
            )

    @staticmethod
    def _scale(masks: nn.Parameter, row: int, width: int):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            scale = masks[row].repeat_interleave(width) if width > 1 else masks[row]
            return (args[0] * scale.to(args[0].dtype), *args[1:])

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def l1(self) -> torch.Tensor:
        return self.head.abs().sum() + self.ffn.abs().sum()
