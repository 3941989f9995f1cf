"""SPSFT: structured-pruning-based sparse fine-tuning (W_hat = W + M W_f on the most important rows).

Before training, every output row (neuron) of each target layer is scored with a structured-pruning
importance (l2 norm, Taylor, or class-aware Quantile-Mean Taylor); the top rows per layer (or over all
layers) get a trainable zero-initialised W_f. The classification head trains fully. The selection is
made once, logged, written to ``spsft_rows.json`` / ``spsft_importance.safetensors`` and saved with the
weights (the layers' row indices), so a saved adapter rebuilds the same layers without data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftlab import checks, distributed
from peftlab.blocks.importance import class_quantile_mean_scores, l2_row_scores, taylor_scores
from peftlab.blocks.params import freeze, train_head
from peftlab.blocks.protocol import adapter_layers
from peftlab.blocks.selection import select_rows
from peftlab.blocks.sparse_rows import (
    NORMS,
    SparseRowsLayer,
    SparseRowsNorm,
    row_shape,
    saved_row_selections,
    sparse_rows_layer,
)
from peftlab.blocks.targeting import ALL_LINEAR, match_targets, module_role
from peftlab.errors import ConfigError
from peftlab.methods.base import (
    CalibrationData,
    Method,
    MethodConfig,
    MethodReport,
    TrainState,
    json_bytes,
    register_method,
    safetensors_bytes,
)

log = logging.getLogger(__name__)

IMPORTANCES = ("l2", "taylor", "qm_taylor")
SPARSE_ROWS = (SparseRowsLayer, SparseRowsNorm)
SELECTIONS = ("layer", "global")


@dataclass
class SpsftConfig(MethodConfig):
    ratio: float = 0.05  # fraction of each layer's rows to train (paper's GLUE/vision runs: 5%)
    rank: int | None = None  # rows per layer (r of the paper's LLM tables); when set, ratio is unused
    selection: str = "layer"  # layer: top rows of each layer | global: top rows over all target layers
    importance: str = "taylor"  # l2 | taylor | qm_taylor
    importance_batches: int = 50  # training batches whose gradients Taylor scores use
    # qm_taylor: up to N training examples of every class (the official code: 500) | null: the examples
    # of each class inside the importance_batches (the paper's 50 batches)
    class_samples: int | None = None
    target_modules: list[str] | str = ALL_LINEAR  # or names / a regex, as lora's target_modules
    freeze_attention: bool = False  # "FA": adapt only feed-forward (MLP) layers among the targets
    conv_rows: bool = False  # also rows of every k x k / grouped convolution (the official vision code)
    train_bias: bool = False  # also train a bias for the selected rows
    # The official code's trainable set (docs/methods.md "Fidelity"): these embeddings fully, a share of every
    # LayerNorm's features, row counts rounded down to an even number; and Taylor scores with or without
    # the bias term.
    train_embeddings: list[str] = field(default_factory=list)  # e.g. [word_embeddings, rel_embeddings]
    norm_ratio: float = 0.0  # fraction of the features of every LayerNorm / BatchNorm (scale, shift) trained
    even_rows: bool = False  # rows per layer: 2 floor(ratio x n / 2) (the official code) | round(ratio x n)
    taylor_bias: bool = True  # Taylor row score sums |b g_b| with |w g_w| (Torch-Pruning) | weights only
    merge_after_training: bool = False  # fold W_f into the base weights before the final evaluation

    def __post_init__(self) -> None:
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"spsft importance={self.importance!r}; allowed: {', '.join(IMPORTANCES)}")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"spsft selection={self.selection!r}; allowed: {', '.join(SELECTIONS)}")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"spsft rank={self.rank} is not allowed; allowed: null or an integer >= 1")
        if self.rank is None and not 0 < self.ratio <= 1:
            raise ConfigError(f"spsft ratio={self.ratio} is not allowed; allowed: 0 < ratio <= 1")
        if not 0 <= self.norm_ratio <= 1:
            raise ConfigError(f"spsft norm_ratio={self.norm_ratio} is not allowed; allowed: 0 <= ratio <= 1")
        if isinstance(self.train_embeddings, str) or not all(
            isinstance(n, str) and n for n in self.train_embeddings
        ):
            raise ConfigError(
                f"spsft train_embeddings={self.train_embeddings!r}; allowed: a list of module names"
            )
        checks.integer("spsft class_samples", self.class_samples, minimum=1, optional=True)
        if self.importance_batches < 1:
            raise ConfigError(f"spsft importance_batches={self.importance_batches}; allowed: >= 1")


@register_method("spsft")
class Spsft(Method):
    config_class = SpsftConfig
    output_files = ("spsft_rows.json", "spsft_importance.safetensors")
    config: SpsftConfig
    merged_only_reason = "huggingface peft has no sparse row fine-tuning (W + M W_f on chosen rows)"

    def __init__(self, config: SpsftConfig) -> None:
        super().__init__(config)
        self.scores: dict[str, torch.Tensor] = {}
        self.rows: dict[str, torch.Tensor] = {}  # backbone module name -> selected row indices
        self.merged = False

    # -- selecting rows -------------------------------------------------------------------------------
    def target_layers(self, backbone: nn.Module) -> dict[str, nn.Module]:
        targets = self.config.target_modules
        names = match_targets(backbone, targets)  # linear layers and 1x1 convolutions
        if self.config.freeze_attention:
            names = [n for n in names if module_role(n) == "ffn"]
            if not names:
                raise ConfigError(
                    "spsft freeze_attention=true left no target layer: every target is attention"
                )
        layers = {name: backbone.get_submodule(name) for name in names}
        if self.config.conv_rows:  # the convolutions that are not linear-like (k x k, grouped) too
            layers.update(
                (n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d) and n not in layers
            )
        for layer in layers.values():
            row_shape(layer)  # a clear error for layers SPSFT cannot adapt
        return layers

    def norm_layers(self, backbone: nn.Module) -> dict[str, nn.Module]:
        """Every affine LayerNorm / BatchNorm of the backbone when ``norm_ratio`` > 0 (the official code
        tunes a fraction of their features too)."""
        if not self.config.norm_ratio:
            return {}
        norms = {n: m for n, m in backbone.named_modules() if isinstance(m, NORMS) and m.weight is not None}
        if not norms:
            raise ConfigError(
                f"spsft norm_ratio={self.config.norm_ratio}: the backbone has no affine LayerNorm or "
                "BatchNorm (RMSNorm is not supported); set norm_ratio=0"
            )
        return norms

    def scored_layers(self, backbone: nn.Module) -> dict[str, nn.Module]:
        return {**self.target_layers(backbone), **self.norm_layers(backbone)}

    def prepare(self, model: nn.Module, data: CalibrationData) -> None:
        kind, with_bias = self.config.importance, self.config.taylor_bias
        if kind == "l2":
            return  # needs no data; attach scores it (so a saved run rebuilds it the same way)
        layers = self.scored_layers(model.backbone)
        samples = self.config.class_samples
        if kind == "qm_taylor" and samples is not None and data.num_labels >= 2:
            batches = examples_per_class(data.stream(), data.num_labels, samples)
        else:
            batches = data.batches(self.config.importance_batches)
        if kind == "taylor":
            self._choose(taylor_scores(model, layers, batches, with_bias), model.backbone)
            return
        if data.num_labels < 2:
            raise ConfigError(
                "spsft importance=qm_taylor needs a classification task (per-class scores); this task "
                "has a single output; allowed here: l2, taylor"
            )
        scores = class_quantile_mean_scores(model, layers, batches, data.num_labels, with_bias)
        self._choose(scores, model.backbone)

    def _choose(self, scores: dict[str, torch.Tensor], backbone: nn.Module) -> None:
        """Rows of the linear layers by ``rank`` / ``ratio`` and ``selection``; features of every norm by
        ``norm_ratio``, per norm."""
        cfg = self.config
        self.scores = scores
        norms = {n for n in scores if isinstance(backbone.get_submodule(n), NORMS)}
        linear = {n: s for n, s in scores.items() if n not in norms}
        self.rows = select_rows(linear, cfg.rank, cfg.ratio, cfg.selection, cfg.even_rows, "spsft rank")
        if norms:
            norm_scores = {n: scores[n] for n in norms}
            self.rows.update(select_rows(norm_scores, None, cfg.norm_ratio, "layer", cfg.even_rows))
        distributed.assert_ranks_agree("SPSFT rows", {k: v.tolist() for k, v in self.rows.items()})
        log.info(
            "spsft: %s importance over %d layers; training %d of %d rows in %d layers",
            cfg.importance,
            len(scores),
            sum(r.numel() for r in self.rows.values()),
            sum(s.numel() for s in scores.values()),
            len(self.rows),
        )

    # -- attaching ----------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        freeze(model)
        if not self.rows and self.config.importance == "l2":
            layers = self.scored_layers(model.backbone)
            scores = {name: l2_row_scores(layer.weight) for name, layer in layers.items()}
            self._choose(scores, model.backbone)
        for name, index in self.rows.items():
            self._wrap(model.backbone, name, index)
        self._train_embeddings(model.backbone)
        train_head(model)

    def _wrap(self, root: nn.Module, name: str, index: torch.Tensor) -> None:
        layer = sparse_rows_layer(root.get_submodule(name), index, self.config.train_bias)
        root.set_submodule(name, layer)

    def _train_embeddings(self, backbone: nn.Module) -> None:
        """``train_embeddings``: the backbone's embedding tables of those names train fully (the official
        code: word and relative-position embeddings; a BERT has no relative ones, so a name may be absent,
        but one of them must be there)."""
        names = set(self.config.train_embeddings)
        if not names:
            return
        found = [
            (n, m)
            for n, m in backbone.named_modules()
            if isinstance(m, nn.Embedding) and n.rsplit(".", 1)[-1] in names
        ]
        if not found:
            tables = sorted(n for n, m in backbone.named_modules() if isinstance(m, nn.Embedding))
            raise ConfigError(
                f"spsft train_embeddings={sorted(names)} names no embedding of the backbone; it has: {tables}"
            )
        for _, table in found:
            table.requires_grad_(True)
        log.info("spsft: training embeddings %s fully", [n for n, _ in found])

    # -- end of training ----------------------------------------------------------------------------
    def on_train_end(self, state: TrainState) -> None:
        if self.config.merge_after_training:  # in place: the layers keep W_f, so the adapter still saves
            layers = [(n, m) for n, m in adapter_layers(state.model) if isinstance(m, SPARSE_ROWS)]
            for _, layer in layers:
                layer.merge()
            self.merged = True
            log.info("spsft: merged W_f into %d base layers for evaluation", len(layers))

    def report(self, state: TrainState, step_times: list[float]) -> MethodReport:
        layers = {}
        for name, index in self.rows.items():
            scores = self.scores.get(name)
            entry: dict[str, Any] = {"rows": index.numel(), "of": None, "index": index.tolist()}
            if scores is not None:
                entry["of"] = scores.numel()
                entry["min_kept_score"] = float(scores[index].min())
                entry["mean_score"] = float(scores.mean())
            layers[name] = entry
        files = {"spsft_rows.json": json_bytes(layers)}
        if self.scores:
            files["spsft_importance.safetensors"] = safetensors_bytes(self.scores)
        rows = sum(e["rows"] for e in layers.values())
        results = {
            "importance": self.config.importance,
            "layers_adapted": len(layers),
            "rows_trained": rows,
            "rows_total": sum(e["of"] or 0 for e in layers.values()),
            "merged": self.merged,
        }
        return MethodReport(results, files)

    # -- saving -------------------------------------------------------------------------------------
    def load_adapter_state_dict(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        """Rebuild the adapted layers from the saved row indices (no data needed), then load the weights."""
        prefix = "backbone."
        for name, index in saved_row_selections(tensors).items():
            if not name.startswith(prefix):
                raise ConfigError(f"saved SPSFT rows of {name} are not inside the backbone")
            if not isinstance(model.get_submodule(name), SPARSE_ROWS):
                self._wrap(model.backbone, name[len(prefix) :], index)
                self.rows[name[len(prefix) :]] = index
        super().load_adapter_state_dict(model, tensors)


def examples_per_class(
    batches: Iterable[dict[str, torch.Tensor]], num_labels: int, limit: int
) -> list[dict[str, torch.Tensor]]:
    """The first ``limit`` examples of every class, in data order (the official code scores each class on
    up to 500 of its training examples): batches cut to the examples still wanted, read until every
    class has ``limit`` or the data ends."""
    taken, kept = [0] * num_labels, []
    for batch in batches:
        labels = batch["labels"]
        keep = torch.zeros_like(labels, dtype=torch.bool)
        for label in labels.unique().tolist():
            where = (labels == label).nonzero().flatten()[: max(0, limit - taken[label])]
            keep[where] = True
            taken[label] += where.numel()
        if keep.any():
            kept.append({k: v[keep] for k, v in batch.items()})
        if min(taken) >= limit:
            break
    return kept
