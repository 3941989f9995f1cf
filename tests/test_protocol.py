"""The adapter-layer base classes: a class states which parts it implements, a missing member fails when
the layer is built, and saving, folding and pruning reach every layer of the parts they need."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peftlab.blocks.adapter import BottleneckAdapter
from peftlab.blocks.lowrank import LowRankLinear
from peftlab.blocks.protocol import (
    AdapterLayer,
    LowRankLayer,
    PrunableAdapterLayer,
    adapter_layers,
    adapter_state_dict,
    fold_adapters,
)
from peftlab.blocks.sparse_rows import SparseRowsLayer, SparseRowsNorm
from peftlab.blocks.structure import prune_columns, prune_rows
from peftlab.errors import ConfigError


class Shift(AdapterLayer):
    """The core only: a trained vector added to the base output; merging adds it to the bias."""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.shift = nn.Parameter(torch.linspace(-1, 1, base_layer.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y if self.merged else y + self.shift

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {"shift": self.shift}

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.shift.copy_(tensors["shift"])

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base_layer.bias.add_(self.shift)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.bias.sub_(self.shift)
            self.merged = False


def test_a_layer_missing_a_core_member_fails_when_built():
    class NoUnmerge(AdapterLayer):
        def adapter_tensors(self) -> dict[str, torch.Tensor]:
            return {}

        def load_adapter_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
            pass

        def merge(self) -> None:
            pass

    with pytest.raises(TypeError, match="unmerge"):
        NoUnmerge()


def test_a_prunable_layer_missing_a_pruning_member_fails_when_built():
    class NoKeepUnits(Shift, PrunableAdapterLayer):
        units = 1

        def keep_outputs(self, index: torch.Tensor) -> None:
            pass

        def keep_inputs(self, index: torch.Tensor) -> None:
            pass

        def removed(self) -> nn.Module:
            return self.base_layer

    with pytest.raises(TypeError, match="keep_units"):
        NoKeepUnits(nn.Linear(3, 2))


def test_every_layer_declares_its_parts_and_counts_its_units():
    lora = LowRankLinear(nn.Linear(6, 4), rank=2)
    adapter = BottleneckAdapter(nn.Linear(6, 4), bottleneck=3)
    rows = SparseRowsLayer(nn.Linear(6, 4), torch.tensor([0, 2]))
    norm = SparseRowsNorm(nn.LayerNorm(4), torch.tensor([1]))
    assert isinstance(lora, LowRankLayer) and isinstance(adapter, LowRankLayer)
    assert isinstance(rows, PrunableAdapterLayer) and not isinstance(rows, LowRankLayer)
    assert isinstance(norm, AdapterLayer) and not isinstance(norm, PrunableAdapterLayer)
    assert (lora.rank, lora.units, adapter.units, rows.units, norm.units) == (2, 2, 3, 2, 1)
    assert not any(layer.merged for layer in (lora, adapter, rows, norm))


def test_saving_and_folding_reach_a_layer_with_only_the_core():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), Shift(nn.Linear(3, 2)))
    x = torch.randn(5, 3)
    expected = model(x)
    assert [name for name, _ in adapter_layers(model)] == ["1"]
    assert torch.equal(adapter_state_dict(model)["1.shift"], model[1].shift.detach())
    assert fold_adapters(model) == 1
    assert type(model[1]) is nn.Linear
    torch.testing.assert_close(model(x), expected)


def test_structural_pruning_refuses_an_adapter_layer_without_the_pruning_part():
    model = nn.Sequential(SparseRowsNorm(nn.LayerNorm(4), torch.tensor([1])), Shift(nn.Linear(4, 2)))
    with pytest.raises(ConfigError, match="SparseRowsNorm cannot be pruned structurally"):
        prune_rows(model, "0", torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="Shift cannot be pruned structurally"):
        prune_columns(model, "1", torch.tensor([0, 1]))
