"""Image tasks and image models: LoRA on 1x1 convolutions is the dense low-rank update, targets are the
pointwise layers only, preprocessing does what it says, data files are checked, and a few training steps
+ an evaluation run for each image task with lora and other methods."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from torch import nn

from peftlab.blocks.lowrank import LowRankLinear
from peftlab.blocks.targeting import match_targets
from peftlab.config import compose_config
from peftlab.errors import ConfigError
from peftlab.models import build_model
from peftlab.registry import TASKS
from peftlab.run.experiment import run_experiment
from peftlab.tasks.vision import ImageTransform, read_idx


def tiny_image_model(name: str = "tiny_efficientnet", num_labels: int = 10):
    torch.manual_seed(0)
    model, spec = build_model(compose_config([f"model={name}"]).model, num_labels, head="image")
    return model, spec


# -- low-rank updates on 1x1 convolutions --------------------------------------------------------------
@pytest.mark.parametrize("stride", [1, 2])
def test_lora_on_a_pointwise_conv_is_the_dense_low_rank_update(stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, kernel_size=1, stride=stride, bias=True)
    x = torch.randn(2, 6, 7, 7)
    layer = LowRankLinear(conv, rank=3, scale=2.0, vectors=True)
    assert torch.equal(layer(x), conv(x))  # B = 0: the base layer
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.vec_d.uniform_(0.5, 1.5)
        layer.vec_b.uniform_(0.5, 1.5)
    delta = layer.delta_weight()  # scale * diag(b) B diag(d) A, (out x in)
    dense = nn.functional.conv2d(x, conv.weight + delta[:, :, None, None], conv.bias, stride=stride)
    torch.testing.assert_close(layer(x), dense, rtol=1e-5, atol=1e-5)
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)


def test_targets_of_a_cnn_are_its_pointwise_convolutions():
    model, _ = tiny_image_model()
    names = match_targets(model.backbone, "all-linear")
    modules = dict(model.backbone.named_modules())
    assert names and all(modules[n].kernel_size == (1, 1) and modules[n].groups == 1 for n in names)
    pointwise = {n for n, m in modules.items() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)}
    assert set(names) == pointwise
    assert not any("depthwise" in n or n.startswith("stem") for n in names)


# -- preprocessing and data ------------------------------------------------------------------------------
def test_image_transform_repeats_grey_resizes_crops_and_normalises():
    grey = np.full((28, 28), 255, dtype=np.uint8)
    out = ImageTransform(size=16, resize=None, mean=(0.5,) * 3, std=(0.5,) * 3)(grey)
    assert out.shape == (3, 16, 16) and torch.allclose(out, torch.ones_like(out))
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    rgb[..., 1] = 51  # 0.2 in channel 1
    out = ImageTransform(size=24, resize=32, mean=(0.0, 0.1, 0.0), std=(1.0, 0.5, 1.0))(rgb)
    assert out.shape == (3, 24, 24)
    torch.testing.assert_close(out[1], torch.full((24, 24), (0.2 - 0.1) / 0.5))
    with pytest.raises(ConfigError, match="smaller than the crop"):
        ImageTransform(size=32, resize=16, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_idx_files_are_read_and_checked(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "good-idx3-ubyte.gz"
    with gzip.open(good, "wb") as handle:
        handle.write(b"\0\0\x08\x03" + np.array([2, 3, 4], dtype=">u4").tobytes() + images.tobytes())
    assert np.array_equal(read_idx(good), images)
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\0\0\x08\x03" + np.array([2, 3, 5], dtype=">u4").tobytes() + images.tobytes())
    with pytest.raises(ConfigError, match="header says shape"):
        read_idx(bad)
    bad.write_bytes(b"PK\x03\x04")
    with pytest.raises(ConfigError, match="not an unsigned-byte IDX file"):
        read_idx(bad)


def test_fashion_mnist_and_digits_load_from_local_files():
    cfg = compose_config(["task=fashion_mnist"]).task
    task = TASKS.get("fashion_mnist")(cfg, None)
    train, test = task.load_split("train"), task.load_split("validation")
    assert (len(train), len(test)) == (60000, 10000)
    assert train[0].image.shape == (28, 28) and {e.label for e in test} == set(range(10))
    digits = TASKS.get("digits")(compose_config(["task=digits"]).task, None)
    assert (len(digits.load_split("train")), len(digits.load_split("validation"))) == (1437, 360)


def test_hub_image_task_offline_is_a_clear_error():
    task = TASKS.get("cifar100")(compose_config(["task=cifar100"]).task, None)
    with pytest.raises(ConfigError, match="needs a network.*uoft-cs/cifar100 could not be loaded"):
        task.load_split("train")


@pytest.mark.parametrize(
    ("model", "task", "message"),
    [("tiny_efficientnet", "rte", "image model"), ("tiny_bert", "digits", "text model")],
)
def test_model_and_task_modalities_must_match(tmp_path, model, task, message):
    cfg = compose_config([f"model={model}", f"task={task}", f"output_dir={tmp_path}", "progress_bar=false"])
    with pytest.raises(ConfigError, match=message):
        run_experiment(cfg)


# -- runs --------------------------------------------------------------------------------------------------
def image_run(tmp_path, *overrides: str):
    cfg = compose_config(
        [
            "progress_bar=false",
            "schedule=quick",
            f"output_dir={tmp_path}",
            "task.max_train_samples=32",
            "task.max_eval_samples=24",
            *overrides,
        ]
    )
    return run_experiment(cfg)


@pytest.mark.parametrize(
    ("model", "task", "method"),
    [
        ("tiny_efficientnet", "fashion_mnist", ["method=lora_vision"]),
        ("tiny_efficientnet", "fashion_mnist", ["method=spsft_vision", "method.importance_batches=2"]),
        ("tiny_efficientnet", "digits", ["method=head"]),
        ("tiny_efficientnet", "digits", ["method=fft"]),
        ("tiny_vit", "digits", ["method=lora", "method.target_modules=[q_proj,v_proj]"]),
        ("tiny_vit", "fashion_mnist", ["method=spsft_vision", "method.importance_batches=2"]),
    ],
)
def test_image_tasks_train_and_evaluate(tmp_path, model, task, method):
    results = image_run(tmp_path, f"model={model}", f"task={task}", *method)
    assert results["status"] == "completed" and results["steps"] == 4
    assert 0.0 <= results["final_eval"]["accuracy"] <= 1.0
    assert results["samples_per_s"] > 0


def test_batchnorm_statistics_stay_pretrained_and_a_saved_run_reloads_exactly(tmp_path):
    model, _ = tiny_image_model()
    model.train()
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.head.training
    run = tmp_path / "run"
    results = image_run(run, "model=tiny_efficientnet", "task=digits", "method=lora_vision")
    again = run_experiment(
        compose_config(
            ["progress_bar=false", "eval_only=true", f"load_from={run}", f"output_dir={tmp_path / 'eval'}"]
            + ["task.max_eval_samples=24"]
        )
    )
    assert again["eval"]["accuracy"] == results["final_eval"]["accuracy"]
    assert again["eval"]["loss"] == pytest.approx(results["final_eval"]["loss"], rel=1e-6)


@pytest.mark.parametrize("groups", [1, 8])
def test_flop_count_of_a_convolution_step_is_three_forwards_also_when_grouped(groups):
    from peftlab.train.efficiency import count_flops

    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    # 2 * batch * out channels * weights per output * positions
    forward = 2 * 2 * 8 * (8 // groups) * 9 * 10 * 10
    assert count_flops(lambda: conv(x)) == forward
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward  # + input grad + weight grad


def test_adapter_refuses_a_convolution_target_by_name():
    from peftlab.methods.base import build_method

    model, _ = tiny_image_model()
    cfg = compose_config(["method=adapter", "method.target_modules=[project_conv]"]).method
    with pytest.raises(ConfigError, match=r"target_modules \['project_conv'\] match no layer"):
        build_method(cfg).setup(model)
