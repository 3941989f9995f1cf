"""A frozen layer plus trainable rows: W_hat = W + M W_f (SPSFT), M a fixed selection of r output rows.

``y = base(x)`` with ``x W_f^T (+ b_f)`` added into the r selected output positions by ``index_add``;
M is never built as a matrix. The backward is written by hand so that autograd keeps only the input x
(the base weight and W_f are parameters, already resident): the r-dim intermediate x W_f^T is not
cached, which is where SPSFT saves memory over LoRA (which caches A x to compute dL/dB).
Linear layers and 1x1 convolutions (channels are rows) take that path; k x k and grouped convolutions
(a row: one output channel's kernel, c_in / groups x k x k) and the features of LayerNorm / BatchNorm
(``SparseRowsNorm``) run through the base layer's own forward with plain autograd, as SPSFT's official
code tunes rows of every convolution and norm of a vision model.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input, conv2d_weight

from peftlab.blocks.protocol import (
    AdapterLayer,
    PrunableAdapterLayer,
    copy_into,
    fold_adapters,
    kept,
    sliced_linear,
)
from peftlab.blocks.targeting import is_pointwise_conv
from peftlab.errors import ConfigError

SparseRowsBase = nn.Linear | nn.Conv2d
NORMS = (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)  # whose features SparseRowsNorm trains


def row_shape(layer: nn.Module) -> tuple[int, int]:
    """(rows, row length) of a supported layer: (out, in) features, or output channels and the length of
    one output channel's kernel (in / groups x k x k)."""
    if isinstance(layer, nn.Linear):
        return layer.out_features, layer.in_features
    if isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros":
        return layer.out_channels, layer.weight[0].numel()
    raise ConfigError(
        f"SPSFT cannot adapt {type(layer).__name__} {layer}; allowed: nn.Linear and nn.Conv2d "
        "(padding_mode zeros)"
    )


def _conv_with(conv: nn.Conv2d, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``conv``'s own forward (its padding, stride, dilation, groups) with ``weight`` and no bias."""
    params = {"weight": weight}
    if conv.bias is not None:
        params["bias"] = weight.new_zeros(weight.shape[0])
    return torch.func.functional_call(conv, params, (x,))


class _SparseRowsLinear(torch.autograd.Function):
    """out = x W^T + b, then out[..., index] += x W_f^T + b_f. Saves only x (plus resident parameters)."""

    @staticmethod
    def forward(ctx, x, weight, bias, rows_weight, rows_bias, index):  # type: ignore[override]
        out = F.linear(x, weight, bias)
        out.index_add_(-1, index, F.linear(x, rows_weight, rows_bias))
        ctx.save_for_backward(x, weight, rows_weight, index)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, rows_weight, index = ctx.saved_tensors
        _check_base_frozen(ctx)
        dtype = grad_out.dtype  # bf16 under autocast: compute in it, return grads in the inputs' dtypes
        grad_rows = grad_out.index_select(-1, index)  # (..., r): dL/d(x W_f^T)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.matmul(grad_out, weight.to(dtype)).add_(
                torch.matmul(grad_rows, rows_weight.to(dtype))
            )
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[3]:
            flat = grad_rows.reshape(-1, grad_rows.shape[-1])
            grad_w = (flat.T @ x.reshape(-1, x.shape[-1]).to(dtype)).to(rows_weight.dtype)
        if ctx.needs_input_grad[4]:
            grad_b = grad_rows.reshape(-1, grad_rows.shape[-1]).sum(0).to(rows_weight.dtype)
        return grad_x, None, None, grad_w, grad_b, None


class _SparseRowsConv1x1(torch.autograd.Function):
    """The same for a 1x1 convolution (rows are output channels); saves only x."""

    @staticmethod
    def forward(ctx, x, weight, bias, rows_weight, rows_bias, index, stride):  # type: ignore[override]
        out = F.conv2d(x, weight, bias, stride)
        rows_kernel = rows_weight[:, :, None, None]
        out.index_add_(1, index, F.conv2d(x, rows_kernel, rows_bias, stride))
        ctx.save_for_backward(x, weight, rows_weight, index)
        ctx.stride = stride
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, rows_weight, index = ctx.saved_tensors
        _check_base_frozen(ctx)
        dtype = grad_out.dtype
        grad_rows = grad_out.index_select(1, index)  # (N, r, H', W')
        rows_kernel = rows_weight[:, :, None, None].to(dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = conv2d_input(x.shape, weight.to(dtype), grad_out, ctx.stride)
            grad_x = grad_x.add_(conv2d_input(x.shape, rows_kernel, grad_rows, ctx.stride)).to(x.dtype)
        if ctx.needs_input_grad[3]:
            grad_w = conv2d_weight(x.to(dtype), rows_kernel.shape, grad_rows, ctx.stride).flatten(1)
            grad_w = grad_w.to(rows_weight.dtype)
        if ctx.needs_input_grad[4]:
            grad_b = grad_rows.sum((0, 2, 3)).to(rows_weight.dtype)
        return grad_x, None, None, grad_w, grad_b, None, None


def _check_base_frozen(ctx) -> None:
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        raise RuntimeError("SparseRowsLayer trains only its rows; its base layer must be frozen")


class _RowsAdapter(AdapterLayer):
    """What a layer with trainable rows ``rows_weight`` (+ ``rows_bias``) at ``rows_index`` of its frozen
    ``base_layer`` shares: its tensors, reload (the same rows only) and merge, by ``_add(sign)``."""

    rows_index: torch.Tensor
    rows_weight: nn.Parameter
    rows_bias: nn.Parameter | None
    what = "sparse-rows layer"

    @property
    def units(self) -> int:
        """The trained rows (a norm's: features)."""
        return self.rows_index.numel()

    # -- AdapterLayer (peftlab/blocks/protocol.py) ---------------------------------------------------
    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """W_f (+ b_f) and the row indices: a saved adapter rebuilds the layer without data."""
        tensors = {"rows_index": self.rows_index, "rows_weight": self.rows_weight}
        if self.rows_bias is not None:
            tensors["rows_bias"] = self.rows_bias
        return tensors

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        index = tensors.get("rows_index")
        if index is not None and not torch.equal(index.cpu(), self.rows_index.cpu()):
            raise ConfigError(f"saved rows {index.tolist()[:10]} differ from this {self.what}'s rows")
        copy_into(self.adapter_tensors(), tensors, f"{self.what} ({self.extra_repr()})")

    @torch.no_grad()
    def merge(self) -> None:
        """Add W_f (and b_f) into the selected rows of the base; forward is then the base layer's."""
        if not self.merged:
            self._add(1.0)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._add(-1.0)
            self.merged = False

    @abstractmethod
    def _add(self, sign: float) -> None:
        """Add ``sign`` x the trained rows into the base layer's weight (and bias)."""


class SparseRowsLayer(_RowsAdapter, PrunableAdapterLayer):
    """``base_layer`` (frozen) + trainable rows ``rows_weight`` (r x d_in, zero-initialised, so the
    layer starts equal to the base) at output positions ``rows_index``, optional ``rows_bias``."""

    def __init__(self, base_layer: SparseRowsBase, index: torch.Tensor, train_bias: bool = False) -> None:
        super().__init__()
        rows, row_len = row_shape(base_layer)
        index = torch.as_tensor(index, dtype=torch.long).flatten()
        if index.numel() == 0 or index.numel() != index.unique().numel():
            raise ConfigError(f"SPSFT needs 1 or more distinct rows, got index {index.tolist()[:10]}")
        if int(index.min()) < 0 or int(index.max()) >= rows:
            raise ConfigError(f"SPSFT row index out of range 0..{rows - 1}: {index.tolist()[:10]}")
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.register_buffer("rows_index", index.to(weight.device))
        self.rows_weight = nn.Parameter(torch.zeros(index.numel(), row_len, **factory))
        self.rows_bias = nn.Parameter(torch.zeros(index.numel(), **factory)) if train_bias else None

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight: models read it (ViT's patch embedding reads its dtype)."""
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if self.merged:
            return base(x)
        if isinstance(base, nn.Linear):
            return _SparseRowsLinear.apply(
                x, base.weight, base.bias, self.rows_weight, self.rows_bias, self.rows_index
            )
        if is_pointwise_conv(base):
            return _SparseRowsConv1x1.apply(
                x, base.weight, base.bias, self.rows_weight, self.rows_bias, self.rows_index, base.stride
            )
        return self._conv_rows(x)

    def _conv_rows(self, x: torch.Tensor) -> torch.Tensor:
        """A k x k or grouped convolution: the rows' kernels through the base layer's own forward."""
        base, index = self.base_layer, self.rows_index
        kernel = self.rows_weight.view(self.units, *base.weight.shape[1:])
        if base.groups == 1:
            rows = _conv_with(base, kernel, x)
        else:  # a row reads only its group's channels: the base convolution with only those kernels set
            full = kernel.new_zeros(base.weight.shape).index_add(0, index, kernel)  # fp32, as the rows
            rows = _conv_with(base, full, x).index_select(1, index)
        if self.rows_bias is not None:
            rows = rows + self.rows_bias.view(1, -1, 1, 1)
        out = base(x)
        return out.index_add(1, index, rows.to(out.dtype))  # a bf16 base: its output's dtype

    def _add(self, sign: float) -> None:
        base = self.base_layer
        _add_rows(base.weight.view(base.weight.shape[0], -1), self.rows_index, self.rows_weight, sign)
        if self.rows_bias is not None:
            if base.bias is None:
                base.bias = nn.Parameter(base.weight.new_zeros(base.weight.shape[0]), requires_grad=False)
            _add_rows(base.bias, self.rows_index, self.rows_bias, sign)

    # -- PrunableAdapterLayer: its units are the trained rows ----------------------------------------
    def keep_units(self, keep: torch.Tensor) -> None:
        """Keep only the trained rows at positions ``keep`` of ``rows_index``."""
        keep = keep.to(self.rows_index.device)
        self.rows_index = self.rows_index.index_select(0, keep)
        self.rows_weight = kept(self.rows_weight, 0, keep)
        self.rows_bias = kept(self.rows_bias, 0, keep)

    def keep_outputs(self, keep: torch.Tensor) -> None:
        """Keep only output rows ``keep``: trained rows among them stay, renumbered."""
        self._check_slicable()
        keep = keep.to(self.rows_index.device)
        position = torch.full((row_shape(self.base_layer)[0],), -1, dtype=torch.long, device=keep.device)
        position[keep] = torch.arange(keep.numel(), device=keep.device)
        new_index = position[self.rows_index]
        still = (new_index >= 0).nonzero().flatten()
        if still.numel() == 0:
            raise ConfigError("pruning would remove every trained row of a sparse-rows layer")
        self.keep_units(still)
        self.rows_index = new_index.index_select(0, still)
        self.base_layer = sliced_linear(self.base_layer, keep, None)

    def keep_inputs(self, keep: torch.Tensor) -> None:
        self._check_slicable()
        self.base_layer = sliced_linear(self.base_layer, None, keep)
        self.rows_weight = kept(self.rows_weight, 1, keep)

    def _check_slicable(self) -> None:
        if not isinstance(self.base_layer, nn.Linear) or self.merged:
            raise ConfigError("only unmerged sparse-rows layers on nn.Linear can be sliced")

    def removed(self) -> nn.Module:
        self.unmerge()
        return self.base_layer

    def extra_repr(self) -> str:
        rows, row_len = row_shape(self.base_layer)
        return f"rows={self.units}/{rows}, row_len={row_len}, bias={self.rows_bias is not None}"


class SparseRowsNorm(_RowsAdapter):
    """``base_layer`` (a frozen LayerNorm or BatchNorm) + trainable scale and shift deltas on the features
    ``rows_index`` (zero-initialised): SPSFT's official code also tunes a fraction of every norm's
    features. A feature of a norm is its "row", so it saves and reloads as ``SparseRowsLayer`` does; it
    is not a ``PrunableAdapterLayer`` (structural pruning slices linear layers only)."""

    what = "sparse-rows norm"

    def __init__(self, base_layer: nn.Module, index: torch.Tensor, train_bias: bool = True) -> None:
        super().__init__()
        if not isinstance(base_layer, NORMS) or base_layer.weight is None:
            raise ConfigError(f"SPSFT norm rows need an affine LayerNorm or BatchNorm, got {base_layer}")
        index = torch.as_tensor(index, dtype=torch.long).flatten()
        features = base_layer.weight.numel()
        if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= features:
            raise ConfigError(f"SPSFT norm features out of range 0..{features - 1}: {index.tolist()[:10]}")
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        weight = base_layer.weight
        self.register_buffer("rows_index", index.to(weight.device))
        self.rows_weight = nn.Parameter(torch.zeros(index.numel(), dtype=weight.dtype, device=weight.device))
        has_bias = train_bias and base_layer.bias is not None
        self.rows_bias = nn.Parameter(torch.zeros_like(self.rows_weight)) if has_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if self.merged:  # the merged parameters in the dtype an unmerged forward gives them
            dtype = torch.promote_types(base.weight.dtype, x.dtype)
            params = {
                n: p.to(dtype) for n, p in (("weight", base.weight), ("bias", base.bias)) if p is not None
            }
            return torch.func.functional_call(base, params, (x,))
        params = {"weight": _with_rows(base.weight, self.rows_index, self.rows_weight, x.dtype)}
        if self.rows_bias is not None:
            params["bias"] = _with_rows(base.bias, self.rows_index, self.rows_bias, x.dtype)
        return torch.func.functional_call(base, params, (x,))  # BatchNorm: its running statistics too

    def _add(self, sign: float) -> None:
        _add_rows(self.base_layer.weight, self.rows_index, self.rows_weight, sign)
        if self.rows_bias is not None:
            _add_rows(self.base_layer.bias, self.rows_index, self.rows_bias, sign)

    def extra_repr(self) -> str:
        return f"features={self.units}/{self.base_layer.weight.numel()}, bias={self.rows_bias is not None}"


def _with_rows(
    base: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, input_dtype: torch.dtype
) -> torch.Tensor:
    """``base`` with ``rows`` (fp32, trained) added at ``index``, summed in fp32, in the wider of the
    base's and the norm input's dtypes: an fp32 base stays fp32; a bf16 base's LayerNorm may get an fp32
    input (after a trained fp32 embedding), which bf16 parameters cannot meet, and a BatchNorm with bf16
    running statistics needs bf16 parameters for its bf16 input. In bf16 a delta below the weight's
    rounding step is lost in the forward (as in a bf16 model's own norms); its gradient still reaches
    the fp32 ``rows``."""
    dtype = torch.promote_types(base.dtype, input_dtype)
    return base.float().index_add(0, index, rows.float()).to(dtype)


@torch.no_grad()
def _add_rows(target: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, sign: float) -> None:
    """target[index] += sign * rows in place (merge / unmerge); the fp32 rows are cast to the target's
    dtype first, so a bf16 base keeps its dtype (the merged weight is rounded to bf16)."""
    target.index_add_(0, index, rows.to(target.dtype), alpha=sign)


def sparse_rows_layer(base: nn.Module, index: torch.Tensor, train_bias: bool) -> nn.Module:
    """The SPSFT wrapper for ``base``: rows of a linear / 1x1 conv, or features of a LayerNorm (whose
    shift is trained with its scale, as the official code tunes both)."""
    if isinstance(base, NORMS):
        return SparseRowsNorm(base, index)
    return SparseRowsLayer(base, index, train_bias)


def sparse_rows_layers(model: nn.Module) -> Iterator[tuple[str, SparseRowsLayer]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, SparseRowsLayer))


def merge_sparse_rows(model: nn.Module) -> int:
    """Replace every SparseRowsLayer by its merged base layer; returns how many were merged."""
    return fold_adapters(model, SparseRowsLayer)


def saved_row_selections(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{module name: row indices} of the sparse-rows layers in a saved adapter (see ``adapter_tensors``)."""
    suffix = ".rows_index"
    return {key[: -len(suffix)]: value for key, value in tensors.items() if key.endswith(suffix)}
