"""EfficientNet-Lite0: the packaged ImageNet weights load completely and classify real photos sensibly;
the tiny random instance, 1x1 convs as plain Conv2d, and TF "same" padding."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_image
from torch import nn

from peftlab.errors import ConfigError
from peftlab.models import efficientnet
from peftlab.models.efficientnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TINY_BLOCKS,
    Conv2dSame,
    EfficientNetLite0,
    load_efficientnet_lite0,
)

# Conv, BN affine and classifier tensors; the BN running statistics are buffers and not counted.
LITE0_PARAMS = 4_652_008
FC_PARAMS = 1280 * 1000 + 1000


@pytest.fixture(scope="module")
def lite0() -> tuple[EfficientNetLite0, nn.Linear]:
    return load_efficientnet_lite0()


def photo(name: str) -> torch.Tensor:
    """scikit-learn sample photo -> [1,3,224,224]: shorter side 256, center crop 224, mean=std=0.5."""
    x = torch.tensor(load_sample_image(name)).permute(2, 0, 1).float().div(255)[None]
    height, width = x.shape[-2:]
    scale = 256 / min(height, width)
    x = F.interpolate(x, size=(round(height * scale), round(width * scale)), mode="bilinear", antialias=True)
    top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    x = x[..., top : top + 224, left : left + 224]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def test_packaged_weights_fill_every_tensor(lite0):
    backbone, fc = lite0
    path = efficientnet.packaged_weights()
    state = torch.load(path, map_location="cpu", weights_only=True)
    ours = {**backbone.state_dict(), **{f"fc.{k}": v for k, v in fc.state_dict().items()}}
    assert len(ours) == len(state) == 296
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, state[efficientnet.checkpoint_key(key)], rtol=0, atol=0)
    torch.testing.assert_close(fc.weight, state["_fc.weight"], rtol=0, atol=0)
    n_params = sum(p.numel() for p in backbone.parameters()) + sum(p.numel() for p in fc.parameters())
    assert n_params == LITE0_PARAMS
    assert sum(p.numel() for p in fc.parameters()) == FC_PARAMS
    assert backbone.num_features == backbone.config.hidden_size == 1280
    assert backbone.config.model_type == "efficientnet_lite0"
    assert len(backbone.blocks) == 16 and backbone.blocks[0].expand_conv is None


@pytest.mark.parametrize(
    ("name", "plausible", "min_prob"),
    [
        # A Chinese temple/palace: measured top-1 palace (698) at p=0.41, then bell cote (442), lakeside,
        # monastery (663). Accepted: palace, monastery, bell cote, stupa (832), castle (483), church (497).
        ("china.jpg", {698, 663, 442, 832, 483, 497}, 0.25),
        # A white-petalled flower: measured top-1 daisy (985) at p=0.34. Accepted: daisy, yellow lady's
        # slipper (986), the two flower classes of ImageNet-1k.
        ("flower.jpg", {985, 986}, 0.2),
    ],
)
def test_real_photos_get_a_sensible_imagenet_class(lite0, name, plausible, min_prob):
    backbone, fc = lite0
    with torch.no_grad():
        probs = fc(backbone(photo(name))).softmax(-1)[0]
    top = int(probs.argmax())
    assert top in plausible, f"{name}: top-1 {top} (p={probs[top]:.3f})"
    assert probs[top] > min_prob


def test_tiny_random_instance_shapes_and_pointwise_convs():
    torch.manual_seed(0)
    model = EfficientNetLite0(blocks=TINY_BLOCKS, stem_channels=8, head_channels=32).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 32)
    assert model.num_features == model.config.hidden_size == 32
    pointwise = [
        m for n, m in model.named_modules() if n.endswith(("expand_conv", "project_conv", "head_conv"))
    ]
    assert len(pointwise) == 2 * len(model.blocks)  # expand (not in block 0), project per block, head
    for conv in pointwise:
        assert type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.padding == (0, 0)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
            assert isinstance(module, Conv2dSame) and module.padding == (0, 0)


def test_drop_connect_only_in_training():
    torch.manual_seed(0)
    model = EfficientNetLite0(blocks=TINY_BLOCKS, stem_channels=8, head_channels=32, drop_connect_rate=0.5)
    x = torch.randn(16, 3, 32, 32)
    assert max(block.drop_connect_rate for block in model.blocks) > 0
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    first = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(first, model(x))


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("size", [7, 8, 15, 16, 224])
def test_tf_same_padding_gives_ceil_size(kernel, size):
    conv = Conv2dSame(4, 4, kernel, stride=2, padding=0, groups=4, bias=False)
    out = conv(torch.randn(1, 4, size, size + 1))
    assert out.shape[-2:] == (-(-size // 2), -(-(size + 1) // 2))


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    # TF puts the odd padding pixel after (bottom/right); stride 1 is symmetric.
    [(8, 3, 2, (0, 1)), (7, 3, 2, (1, 1)), (8, 5, 2, (1, 2)), (7, 5, 2, (2, 2)), (9, 5, 1, (2, 2))],
)
def test_tf_same_padding_is_asymmetric_like_tensorflow(size, kernel, stride, expected):
    assert efficientnet.tf_same_padding(size, kernel, stride) == expected


def test_missing_package_and_mismatched_file_are_config_errors(monkeypatch, tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "extra": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="missing"):
        load_efficientnet_lite0(bad)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == efficientnet.PACKAGE else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match="make setup"):
        load_efficientnet_lite0()


def test_set_drop_connect_rate_matches_the_constructor_schedule():
    built = EfficientNetLite0(blocks=TINY_BLOCKS, stem_channels=8, head_channels=32, drop_connect_rate=0.4)
    later = EfficientNetLite0(blocks=TINY_BLOCKS, stem_channels=8, head_channels=32)
    later.set_drop_connect_rate(0.4)
    assert [b.drop_connect_rate for b in later.blocks] == [b.drop_connect_rate for b in built.blocks]
