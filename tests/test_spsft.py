"""SPSFT against its definition: the layer computes W + M W_f (forward and gradients) without building M;
step 0 equals the base; autograd keeps only x (fewer saved bytes than LoRA); Taylor and Quantile-Mean
Taylor scores match a hand computation; selection respects rank / ratio / scope; merging keeps outputs;
a saved adapter rebuilds its rows without data."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from omegaconf import OmegaConf
from torch import nn

from peftlab.blocks.importance import class_quantile_mean_scores, quantile_mean, taylor_scores
from peftlab.blocks.lowrank import LowRankLinear
from peftlab.blocks.selection import select_rows
from peftlab.blocks.sparse_rows import SparseRowsLayer, merge_sparse_rows, sparse_rows_layers
from peftlab.errors import ConfigError
from peftlab.methods.base import CalibrationData, build_method
from peftlab.run.experiment import build_trainer, run_experiment
from peftlab.run.folder import RunDir


def spsft(**options):
    return build_method(OmegaConf.create({"name": "spsft", **options}))


def random_rows(layer: SparseRowsLayer, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.rows_weight.copy_(
            torch.randn(layer.rows_weight.shape, generator=gen, dtype=layer.rows_weight.dtype)
        )
        if layer.rows_bias is not None:
            layer.rows_bias.copy_(
                torch.randn(layer.rows_bias.shape, generator=gen, dtype=layer.rows_bias.dtype)
            )


# -- the layer ------------------------------------------------------------------------------------------


def check_against_reference(layer: SparseRowsLayer, x: torch.Tensor, reference) -> None:
    """layer(x) and the gradients of x, W_f and b_f equal those of ``reference(x, W_f, b_f)``, a dense
    computation on copies; the frozen base gets no gradient."""
    x_ref = x.detach().clone().requires_grad_(True)
    w_f = layer.rows_weight.detach().clone().requires_grad_(True)
    bias = layer.rows_bias if layer.rows_bias is not None else torch.zeros(layer.units, dtype=x.dtype)
    b_f = bias.detach().clone().requires_grad_(True)
    out, expected = layer(x), reference(x_ref, w_f, b_f)
    torch.testing.assert_close(out, expected)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.rows_weight.grad, w_f.grad)
    if layer.rows_bias is not None:
        torch.testing.assert_close(layer.rows_bias.grad, b_f.grad)
    assert all(p.grad is None for p in layer.base_layer.parameters())


@pytest.mark.parametrize("train_bias", [False, True])
def test_linear_forward_and_grads_equal_dense_reference(train_bias):
    torch.manual_seed(0)
    base = nn.Linear(12, 10).double()
    index = torch.tensor([7, 1, 4])  # unsorted on purpose
    layer = SparseRowsLayer(base, index, train_bias=train_bias)
    random_rows(layer)
    mask = torch.zeros(10, 3, dtype=torch.double)  # the dense selection matrix M of the paper
    mask[index, torch.arange(3)] = 1.0

    def reference(x, w_f, b_f):
        return F.linear(x, base.weight + mask @ w_f, base.bias + mask @ b_f)

    check_against_reference(layer, torch.randn(3, 5, 12, dtype=torch.double, requires_grad=True), reference)


def test_pointwise_conv_forward_and_grads_equal_dense_reference():
    torch.manual_seed(0)
    base = nn.Conv2d(6, 8, kernel_size=1, stride=2).double()
    index = torch.tensor([0, 5])
    layer = SparseRowsLayer(base, index, train_bias=True)
    random_rows(layer)

    def reference(x, w_f, b_f):
        delta = torch.zeros(8, 6, dtype=torch.double).index_add(0, index, w_f)
        bias = base.bias + torch.zeros(8, dtype=torch.double).index_add(0, index, b_f)
        return F.conv2d(x, base.weight + delta[:, :, None, None], bias, stride=2)

    check_against_reference(layer, torch.randn(2, 6, 7, 7, dtype=torch.double, requires_grad=True), reference)


def test_layer_starts_equal_to_base_and_rejects_bad_rows():
    base = nn.Linear(8, 6)
    layer = SparseRowsLayer(base, torch.tensor([1, 2]))
    x = torch.randn(4, 8)
    assert torch.equal(layer(x), base(x))
    with pytest.raises(ConfigError, match="out of range"):
        SparseRowsLayer(nn.Linear(8, 6), torch.tensor([6]))
    with pytest.raises(ConfigError, match="distinct"):
        SparseRowsLayer(nn.Linear(8, 6), torch.tensor([1, 1]))
    with pytest.raises(ConfigError, match="padding_mode zeros"):  # k x k: tests/test_fidelity.py
        SparseRowsLayer(nn.Conv2d(3, 4, kernel_size=3, padding=1, padding_mode="reflect"), torch.tensor([0]))


def saved_activation_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward, parameters and buffers excluded (resident)."""
    resident = {t.untyped_storage().data_ptr() for t in [*layer.parameters(), *layer.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in resident:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum().backward()
    return sum(saved.values())


def test_spsft_saves_only_x_and_less_than_lora():
    d, r = 64, 16
    x = torch.randn(4, 32, d, requires_grad=True)  # a hidden state: gradients flow to it
    index = torch.arange(0, d, d // r)
    sparse = SparseRowsLayer(nn.Linear(d, d), index)
    lora_same_rank = LowRankLinear(nn.Linear(d, d), r)
    lora_same_params = LowRankLinear(nn.Linear(d, d), r // 2)  # r (d + d) / 2 = r d params, like W_f
    for lora in (lora_same_rank, lora_same_params):
        lora.base_layer.requires_grad_(False)
        lora.lora_A.requires_grad_(True)
        lora.lora_B.requires_grad_(True)
    assert sparse.rows_weight.numel() == sum(
        p.numel() for p in lora_same_params.parameters() if p.requires_grad
    )
    spsft_bytes = saved_activation_bytes(sparse, x)
    assert spsft_bytes == x.numel() * x.element_size()  # x and nothing else
    lora_r = saved_activation_bytes(lora_same_rank, x)
    lora_p = saved_activation_bytes(lora_same_params, x)
    assert spsft_bytes < lora_p < lora_r
    # what LoRA keeps beyond x is its r-dim intermediate A x
    assert lora_r - spsft_bytes >= 4 * 32 * r * x.element_size()


def test_merge_gives_the_same_outputs():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Conv2d(1, 1, 1))
    model[0] = SparseRowsLayer(model[0], torch.tensor([2, 5]), train_bias=True)
    random_rows(model[0])
    x = torch.randn(3, 1, 4, 8)
    before = model(x)
    assert merge_sparse_rows(model) == 1
    assert isinstance(model[0], nn.Linear) and not list(sparse_rows_layers(model))
    torch.testing.assert_close(model(x), before)


# -- importance scores ----------------------------------------------------------------------------------


class Toy(nn.Module):
    """logits = fc(x): the gradient of the mean cross-entropy is (softmax - onehot)^T x / n by hand."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.backbone = nn.Sequential()
        self.backbone.add_module("fc", nn.Linear(4, 3).double())

    def forward(self, inputs, labels):
        logits = self.backbone.fc(inputs)
        return SimpleNamespace(loss=F.cross_entropy(logits, labels), logits=logits)


def hand_gradients(model: Toy, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = model.backbone.fc.weight.detach().numpy()
    b = model.backbone.fc.bias.detach().numpy()
    logits = x @ w.T + b
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    delta = probs - np.eye(3)[y]
    return delta.T @ x / len(y), delta.mean(0)


def hand_taylor(model: Toy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    gw, gb = hand_gradients(model, x, y)
    w = model.backbone.fc.weight.detach().numpy()
    b = model.backbone.fc.bias.detach().numpy()
    return np.abs(w * gw).sum(1) + np.abs(b * gb)


def toy_batches():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(10, 4, generator=gen, dtype=torch.double)
    y = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 0, 1])
    return x, y, [{"inputs": x[:6], "labels": y[:6]}, {"inputs": x[6:], "labels": y[6:]}]


def test_taylor_scores_match_hand_computation():
    model = Toy()
    x, y, batches = toy_batches()
    layers = {"fc": model.backbone.fc}
    scores = taylor_scores(model, layers, batches)["fc"]
    np.testing.assert_allclose(scores.numpy(), hand_taylor(model, x.numpy(), y.numpy()), rtol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # calibration leaves no gradient behind


def test_quantile_mean_taylor_matches_hand_computation():
    model = Toy()
    x, y, batches = toy_batches()
    per_class = np.stack(
        [hand_taylor(model, x.numpy()[y.numpy() == t], y.numpy()[y.numpy() == t]) for t in range(3)]
    )
    expected = np.mean([np.quantile(per_class, q, axis=0) for q in np.linspace(0, 1, 11)], axis=0)
    scores = class_quantile_mean_scores(model, {"fc": model.backbone.fc}, batches, num_labels=3)["fc"]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6)
    # Quantile-Mean lies between the class mean (Taylor) and the class max, and differs from both here
    torch.testing.assert_close(quantile_mean(torch.tensor([[1.0], [3.0]])), torch.tensor([2.0]))


# -- selection ------------------------------------------------------------------------------------------


def test_selection_respects_rank_ratio_and_scope():
    scores = {
        "a": torch.tensor([5.0, 1.0, 4.0, 3.0, 2.0, 0.0, 9.0, 8.0]),
        "b": torch.tensor([1.0, 1.1, 0.9, 0.95]),
    }
    by_rank = select_rows(scores, rank=2, ratio=0.05, scope="layer")
    assert by_rank["a"].tolist() == [6, 7] and by_rank["b"].tolist() == [0, 1]
    by_ratio = select_rows(scores, rank=None, ratio=0.5, scope="layer")
    assert by_ratio["a"].tolist() == [0, 2, 6, 7] and by_ratio["b"].tolist() == [0, 1]
    assert select_rows(scores, rank=None, ratio=0.01, scope="layer")["b"].numel() == 1  # at least one row
    # global: 4 rows in all; scores divided by the layer mean (a: 4.0, b: 0.9875), so b's rows compete:
    # 9/4, 8/4, 5/4 from a, then 1.1/0.9875 from b, ahead of a's 4/4
    chosen = select_rows(scores, rank=2, ratio=0.05, scope="global")
    assert chosen["a"].tolist() == [0, 6, 7] and chosen["b"].tolist() == [1]
    with pytest.raises(ConfigError, match="larger than layer 'b'"):
        select_rows(scores, rank=5, ratio=0.05, scope="layer")


# -- the method in the loop -----------------------------------------------------------------------------


def test_step0_equals_base_and_only_rows_and_head_train(tmp_path, tiny_model, batch):
    model, _ = tiny_model
    with torch.no_grad():
        base_logits = model(**batch).logits
    method = spsft(importance="l2", ratio=0.25)
    method.setup(model)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base_logits, rtol=0, atol=0)
    layers = list(sparse_rows_layers(model.backbone))
    assert len(layers) == 12  # 2 blocks x (q, k, v, attention-out, FFN in, FFN out)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if n.startswith("head.") or ".rows_weight" in n}
    assert sum(".rows_weight" in n for n in trainable) == 12
    model.train()
    model(**batch).loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    assert all(model.get_parameter(n).grad is not None for n in trainable)


def test_freeze_attention_adapts_only_ffn(tiny_model):
    model, _ = tiny_model
    spsft(importance="l2", rank=4, freeze_attention=True).setup(model)
    names = [n for n, _ in sparse_rows_layers(model.backbone)]
    assert len(names) == 4 and all("attention" not in n for n in names)
    with pytest.raises(ConfigError, match="left no target"):
        spsft(importance="l2", target_modules=["query"], freeze_attention=True).setup(model)


def test_calibration_does_not_change_the_training_order(tmp_path):
    def train_order(*overrides):
        cfg = tiny_config(tmp_path / overrides[0].replace("=", "_"), *overrides)
        trainer = build_trainer(cfg, RunDir(tmp_path / "unused"))
        return [b["input_ids"].tolist() for b in trainer.train_loader]

    assert train_order("method=spsft", "method.importance_batches=2") == train_order("method=lora")


def test_taylor_run_reports_saves_and_reloads_without_data(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(run, "method=spsft", "method.importance_batches=2", "method.train_bias=true")
    results = run_experiment(cfg)
    report = results["method_report"]
    assert report["importance"] == "taylor" and report["layers_adapted"] == 12
    rows = json.loads((run / "spsft_rows.json").read_text())
    assert sum(e["rows"] for e in rows.values()) == report["rows_trained"]
    # 5% of 32 / 64 rows, at least one row per layer
    assert {e["rows"] for e in rows.values()} == {2, 3}
    assert (run / "spsft_importance.safetensors").is_file()
    saved = json.loads((run / "adapter.json").read_text())["tensors"]
    assert sum(k.endswith(".rows_index") for k in saved) == 12
    reloaded = run_experiment(tiny_config(tmp_path / "eval", "eval_only=true", f"load_from={run}"))
    assert reloaded["train_examples"] == 0  # the rows came from the adapter, not from new scores
    assert reloaded["eval"]["accuracy"] == results["final_eval"]["accuracy"]
    assert reloaded["eval"]["loss"] == pytest.approx(results["final_eval"]["loss"], abs=1e-6)


def test_merge_after_training_keeps_metrics_and_adapter(tmp_path):
    merged = run_experiment(
        tiny_config(
            tmp_path / "m", "method=spsft", "method.importance=l2", "method.merge_after_training=true"
        )
    )
    plain = run_experiment(tiny_config(tmp_path / "p", "method=spsft", "method.importance=l2"))
    assert merged["method_report"]["merged"] and not plain["method_report"]["merged"]
    assert merged["final_eval"]["accuracy"] == plain["final_eval"]["accuracy"]
    assert merged["final_eval"]["loss"] == pytest.approx(plain["final_eval"]["loss"], abs=1e-5)
    saved = json.loads((tmp_path / "m" / "adapter.json").read_text())["tensors"]
    assert sum(k.endswith(".rows_weight") for k in saved) == 12


def test_bad_options_fail_with_what_is_allowed(tmp_path, tiny_model):
    with pytest.raises(ConfigError, match="allowed: l2, taylor, qm_taylor"):
        spsft(importance="fisher")
    with pytest.raises(ConfigError, match="allowed: layer, global"):
        spsft(selection="random")
    with pytest.raises(ConfigError, match="larger than layer"):
        spsft(importance="l2", rank=65).setup(tiny_model[0])
    with pytest.raises(ConfigError, match="needs a classification task"):
        cfg = tiny_config(tmp_path, "method=spsft", "method.importance=qm_taylor", "task=stsb")
        build_trainer(cfg, RunDir(tmp_path / "x"))


def test_calibration_batches_limit_and_device():
    loader = [{"labels": torch.tensor([i])} for i in range(5)]
    data = CalibrationData(loader, torch.device("cpu"), num_labels=2)
    assert [int(b["labels"]) for b in data.batches(3)] == [0, 1, 2]


@pytest.mark.parametrize("conv", [False, True])
def test_bf16_autocast_keeps_fp32_gradients_close_to_fp32(conv):
    torch.manual_seed(0)
    base = nn.Conv2d(8, 6, kernel_size=1) if conv else nn.Linear(8, 6)
    layer = SparseRowsLayer(base, torch.tensor([1, 4]), train_bias=True)
    random_rows(layer)
    x = torch.randn(2, 8, 3, 3) if conv else torch.randn(4, 5, 8)
    grads = []
    for enabled in (False, True):
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = layer(x)
        out.float().square().sum().backward()
        grads.append((layer.rows_weight.grad.clone(), layer.rows_bias.grad.clone()))
    for fp32, bf16 in zip(grads[0], grads[1], strict=True):
        assert bf16.dtype == torch.float32
        torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05 * fp32.abs().max().item())
