"""The low-rank path shared by LoRA, ELoRA and AFLoRA (and LoRA's variants, e.g. DoRA).

    y = base(x) + scale * b ⊙ B (d ⊙ A dropout(x))

LoRA uses no vectors (d = b = 1) and scale = alpha / r; ELoRA/AFLoRA use the vectors and scale 1.
Initialisations: ``lora`` (A kaiming-uniform with a=sqrt(5), B zero: peft's, drawn as peft draws it),
``fixed`` (nothing drawn: ELoRA's frozen pair replaces A, B), ``kaiming`` (A and B kaiming-uniform, a=0:
AFLoRA's), ``pissa`` / ``olora`` (A, B from the top-r singular vectors / the QR of W; the base keeps the
residual W - scale·BA). A variant (``LowRankVariant``, registered in ``LORA_VARIANTS``) changes how the
update enters the output, the merge and the slicing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.blocks.lowrank_variant import PLAIN, LowRankVariant
from peftlab.blocks.params import default_param_groups
from peftlab.blocks.projections import FixedProjections
from peftlab.blocks.protocol import LowRankLayer, adapter_layers, copy_into, kept, sliced_linear
from peftlab.blocks.targeting import TargetSpec, match_targets, replace_module
from peftlab.errors import ConfigError
from peftlab.registry import LORA_VARIANTS

Wrapped = TypeVar("Wrapped", bound=nn.Module)
INITS = ("lora", "kaiming", "pissa", "olora", "fixed")


class LowRankLinear(LowRankLayer):
    """A frozen ``nn.Linear`` (or 1x1 ``nn.Conv2d``, a linear map over channels) plus a low-rank update;
    step 0 equals the base layer when B or b is 0 (or, for PiSSA, by construction)."""

    def __init__(
        self,
        base_layer: nn.Linear | nn.Conv2d,
        rank: int,
        scale: float = 1.0,
        dropout: float = 0.0,
        vectors: bool = False,
        init: str = "lora",
        variant: str | None = None,
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ConfigError(f"low-rank init={init!r} is not allowed; allowed: {', '.join(INITS)}")
        self.base_layer = base_layer
        self.conv = isinstance(base_layer, nn.Conv2d)  # pointwise: A and B act on the channel dim
        self.rank = rank
        self.scale = float(scale)
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        # b before d: the parameter order of peft's VeRA layer (gradient clipping sums norms in order)
        self.vec_b = nn.Parameter(torch.ones(self.out_features, **factory)) if vectors else None
        self.vec_d = nn.Parameter(torch.ones(rank, **factory)) if vectors else None
        # p=0 must not add a copy of the activations: use Identity, as peft does.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fixed: FixedProjections | None = None
        self.save_fixed = False  # whether the fixed pair is saved (else regenerated from its seed)
        self.register_buffer("init_A", None)  # PiSSA: the factors the residual base was computed with
        self.register_buffer("init_B", None)
        self.init = init
        self._initialise(init)
        self.variant = LORA_VARIANTS.get(variant)(self) if variant else None

    def _initialise(self, init: str) -> None:
        if init == "lora":
            with torch.no_grad():
                self.lora_A.copy_(peft_lora_a(self.rank, self.in_features, self.out_features))
        elif init == "fixed":
            pass  # ``use_fixed_projections`` follows: A and B are never drawn
        elif init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A)
            nn.init.kaiming_uniform_(self.lora_B)
        else:  # pissa, olora: peft's nn.Linear pair draws its default init first (the same RNG state after)
            peft_lora_a(self.rank, self.in_features, self.out_features, again=False)
            self._from_weight(init)

    @torch.no_grad()
    def _from_weight(self, init: str) -> None:
        """PiSSA (peft's ``init_lora_weights="pissa"``): W = U S V^T; B = U_r sqrt(S_r / s),
        A = sqrt(S_r / s) V_r^T. OLoRA (peft's ``olora``): W = QR; B = Q_r, A = R_r. Then the base weight
        is W - s·BA (step 0 is the base model); the factors are kept to rebuild the residual."""
        if self.conv:
            raise ConfigError(f"init={init} adapts nn.Linear layers only; allowed for 1x1 convolutions: lora")
        weight = self.base_layer.weight
        if init == "olora":
            q, r = torch.linalg.qr(weight.float())
            self.lora_A.copy_(r[: self.rank])
            self.lora_B.copy_(q[:, : self.rank])
        else:
            u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
            root = torch.sqrt(s[: self.rank] / self.scale)
            self.lora_A.copy_(root[:, None] * vh[: self.rank])
            self.lora_B.copy_(u[:, : self.rank] * root[None, :])
        self.init_A, self.init_B = self.lora_A.detach().clone(), self.lora_B.detach().clone()
        weight.copy_(
            (weight.float() - self.scale * (self.lora_B.float() @ self.lora_A.float())).to(weight.dtype)
        )

    @property
    def in_features(self) -> int:
        return self.base_layer.in_channels if self.conv else self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_channels if self.conv else self.base_layer.out_features

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        x = self.dropout(x)
        h = self._update(x)
        out = self.variant.output(self, x, y, h) if self.variant is not None else y + self.scaled(h)
        # the base output's dtype (as peft): fp32 vectors or magnitudes would promote a bf16 output to
        # fp32, which a bf16 LayerNorm after it does not take on the CPU
        return out.to(y.dtype)

    def scaled(self, h: torch.Tensor) -> torch.Tensor:
        """scale · h, as peft multiplies (a separate product, not fused into the add: the same bits)."""
        return h if self.scale == 1.0 else h * self.scale

    def _update(self, x: torch.Tensor) -> torch.Tensor:
        """b ⊙ B(d ⊙ A x), unscaled."""
        lora_a, lora_b = self.projections()
        if self.conv:  # channels first: the same maps as 1x1 convolutions (A takes the base's stride)
            h = F.conv2d(x, lora_a[:, :, None, None], stride=self.base_layer.stride)
            if self.vec_d is not None:
                h = h * self.vec_d[:, None, None]
            h = F.conv2d(h, lora_b[:, :, None, None])
            return h * self.vec_b[:, None, None] if self.vec_b is not None else h
        h = F.linear(x, lora_a)
        if self.vec_d is not None:
            h = h * self.vec_d
        h = F.linear(h, lora_b)
        return h * self.vec_b if self.vec_b is not None else h

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scale · diag(b) B diag(d) A (out x in), computed in fp32."""
        lora_a, lora_b = self.projections()
        a = lora_a.detach().float()
        b = lora_b.detach().float()
        if self.vec_d is not None:
            a = a * self.vec_d.detach().float()[:, None]
        if self.vec_b is not None:
            b = b * self.vec_b.detach().float()[:, None]
        return self.scale * (b @ a)

    # -- merging ----------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight, for inference at base-layer cost."""
        if not self.merged:
            self._set_weight(self._variant().merged_weight)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._set_weight(self._variant().unmerged_weight)
            self.merged = False

    def _set_weight(self, rule: Callable[..., torch.Tensor]) -> None:
        weight = self.base_layer.weight
        matrix = weight.float().view(self.out_features, self.in_features)
        weight.copy_(rule(self, matrix, self.delta_weight()).view_as(weight).to(weight.dtype))

    def _variant(self) -> LowRankVariant:
        return self.variant if self.variant is not None else PLAIN

    def removed(self) -> nn.Module:
        """The base layer without the adapter; for PiSSA the residual gets its principal part back."""
        self.unmerge()
        if self.init_A is not None:
            with torch.no_grad():
                weight = self.base_layer.weight
                weight.add_((self.scale * (self.init_B.float() @ self.init_A.float())).to(weight.dtype))
        return self.base_layer

    # -- the adapter's tensors ----------------------------------------------------------------------
    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """A, B (trained or frozen), the vectors, the variant's tensors, PiSSA's initial factors, and the
        fixed pair when it is saved rather than regenerated."""
        tensors = {k: v for k, v in self._tensors().items() if not k.startswith("fixed.")}
        if self.fixed is not None and self.save_fixed:
            tensors.update({"fixed.A": self.fixed.A, "fixed.B": self.fixed.B})
        return tensors

    def _tensors(self) -> dict[str, torch.Tensor]:
        own = {n: p for n, p in self.named_parameters() if not n.startswith("base_layer.")}
        for name in ("init_A", "init_B", "lora_A", "lora_B"):  # buffers when frozen or fixed projections
            if isinstance(getattr(self, name, None), torch.Tensor):
                own[name] = getattr(self, name)
        if self.fixed is not None:
            own.update({"fixed.A": self.fixed.A, "fixed.B": self.fixed.B})
        return own

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = dict(tensors)
        init_a, init_b = tensors.pop("init_A", None), tensors.pop("init_B", None)
        if init_a is not None and init_b is not None:
            self._use_residual_of(init_a, init_b)
        copy_into(self._tensors(), tensors, f"low-rank layer ({self.extra_repr()})")

    @torch.no_grad()
    def _use_residual_of(self, init_a: torch.Tensor, init_b: torch.Tensor) -> None:
        """PiSSA: make the base the residual of the SAVED initial factors (not of this model's own SVD)."""
        if self.init_A is None:
            raise ConfigError(
                "saved PiSSA factors (init_A/init_B) for a layer not initialised with init=pissa"
            )
        if torch.equal(init_a.to(self.init_A), self.init_A) and torch.equal(
            init_b.to(self.init_B), self.init_B
        ):
            return
        weight = self.base_layer.weight
        own = self.init_B.float() @ self.init_A.float()
        saved = init_b.to(weight.device).float() @ init_a.to(weight.device).float()
        weight.copy_((weight.float() + self.scale * (own - saved)).to(weight.dtype))
        self.init_A.copy_(init_a)
        self.init_B.copy_(init_b)

    # -- projections --------------------------------------------------------------------------------
    def use_fixed_projections(self, fixed: FixedProjections, save: bool = False) -> None:
        """Use frozen projections sliced from ``fixed`` (possibly shared by many layers) instead of A, B;
        ``save``: a saved adapter holds the pair (else it is regenerated from its seed)."""
        if fixed.rank != self.rank:
            raise ValueError(f"fixed projections have rank {fixed.rank}, layer has {self.rank}")
        del self.lora_A, self.lora_B
        self.fixed, self.save_fixed = fixed, save

    def projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) as used in forward: own tensors, or slices of the fixed pair."""
        if self.fixed is not None:
            return self.fixed.A[:, : self.in_features], self.fixed.B[: self.out_features, :]
        return self.lora_A, self.lora_B

    def low_rank_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B): (rank x in) and (out x rank)."""
        if self.fixed is not None:
            raise ValueError("a layer with fixed projections has no trainable (A, B) pair")
        return self.lora_A, self.lora_B

    def vectors(self) -> list[nn.Parameter]:
        """The scaling vectors d and b (ELoRA/AFLoRA), when the layer has them."""
        return [v for v in (self.vec_d, self.vec_b) if v is not None]

    def named_projections(self) -> dict[str, nn.Parameter]:
        """The projection matrices as parameters, by name (AFLoRA freezes them one by one)."""
        return {
            n: p for n, p in (("lora_A", self.lora_A), ("lora_B", self.lora_B)) if isinstance(p, nn.Parameter)
        }

    def _own_projections(self) -> None:
        """Slicing makes a layer's fixed projections its own frozen tensors (no longer a seeded slice)."""
        if self.fixed is not None:
            a, b = (t.detach().clone() for t in self.projections())
            self.fixed = None
            self.register_buffer("lora_A", a)
            self.register_buffer("lora_B", b)

    # -- slicing ------------------------------------------------------------------------------------
    @property
    def units(self) -> int:
        """A low-rank layer's units are its ranks."""
        return self.rank

    def keep_units(self, keep: torch.Tensor) -> None:
        """Keep only ranks ``keep`` (rows of A, columns of B, entries of d); the scale is unchanged, as in
        Light-PEFT's code (alpha / the original rank). PiSSA's dropped ranks return to the base."""
        self._own_projections()
        if self.init_A is not None:
            drop = torch.ones(self.rank, dtype=torch.bool, device="cpu")  # indexed by keep.cpu()
            drop[keep.cpu()] = False
            with torch.no_grad():
                weight = self.base_layer.weight
                back = (
                    self.init_B[:, drop.to(weight.device)].float()
                    @ self.init_A[drop.to(weight.device)].float()
                )
                weight.add_((self.scale * back).to(weight.dtype))
        self._slice({"lora_A": 0, "init_A": 0, "vec_d": 0, "lora_B": 1, "init_B": 1}, keep)
        self.rank = int(keep.numel())

    def keep_outputs(self, keep: torch.Tensor) -> None:
        """Keep only output rows ``keep``: base rows and bias, rows of B, entries of b."""
        self._check_linear()
        self._own_projections()
        if self.variant is not None:
            self.variant.keep_outputs(self, keep)
        self.base_layer = sliced_linear(self.base_layer, keep, None)
        self._slice({"lora_B": 0, "init_B": 0, "vec_b": 0}, keep)

    def keep_inputs(self, keep: torch.Tensor) -> None:
        """Keep only input columns ``keep``: base columns and columns of A."""
        self._check_linear()
        self._own_projections()
        if self.variant is not None:
            self.variant.keep_inputs(self, keep)
        self.base_layer = sliced_linear(self.base_layer, None, keep)
        self._slice({"lora_A": 1, "init_A": 1}, keep)

    def _check_linear(self) -> None:
        if self.conv or self.merged:
            raise ConfigError("only unmerged low-rank layers on nn.Linear can be sliced")

    def _slice(self, dims: dict[str, int], keep: torch.Tensor) -> None:
        for name, dim in dims.items():
            value = getattr(self, name, None)
            if isinstance(value, nn.Parameter):
                setattr(self, name, kept(value, dim, keep))
            elif isinstance(value, torch.Tensor):
                setattr(self, name, value.index_select(dim, keep.to(value.device)).clone())

    def extra_repr(self) -> str:
        vectors = self.vec_d is not None
        variant = type(self.variant).__name__ if self.variant is not None else None
        return (
            f"rank={self.rank}, scale={self.scale:g}, vectors={vectors}, init={self.init}, "
            f"variant={variant}, merged={self.merged}"
        )


def peft_lora_a(rank: int, in_features: int, out_features: int, again: bool = True) -> torch.Tensor:
    """LoRA's initial A as peft draws it, on the CPU in fp32 from the global generator: its layer builds
    ``nn.Linear(in, r)`` and ``nn.Linear(r, out)`` (each draws its default kaiming-uniform init), then
    draws A again with a=sqrt(5). The same draws in the same order: the same A from the same seed, and
    the same generator state for every dropout mask after it."""
    a = torch.empty(rank, in_features, device="cpu")  # the CPU on purpose: peft's draws are made there
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # nn.Linear(in, r)'s own init
    nn.init.kaiming_uniform_(torch.empty(out_features, rank, device="cpu"), a=math.sqrt(5))  # Linear(r, out)
    return nn.init.kaiming_uniform_(a, a=math.sqrt(5)) if again else a


def check_rank(name: str, layer: nn.Linear | nn.Conv2d, rank: int, option: str = "lora rank") -> None:
    """A rank must be at least 1 and at most min(in, out) of the layer it adapts."""
    conv = isinstance(layer, nn.Conv2d)
    fan_in = layer.in_channels if conv else layer.in_features
    fan_out = layer.out_channels if conv else layer.out_features
    limit = min(fan_in, fan_out)
    if not 1 <= rank <= limit:
        raise ConfigError(
            f"{option}={rank} is not allowed for layer {name!r} ({fan_in} -> {fan_out}); allowed: 1..{limit}"
        )


def init_vectors(layer: LowRankLinear, d: float, b: float) -> None:
    """ELoRA/AFLoRA vector init: d (rank-sized) to ``d``, b (output-sized) to ``b`` (0: step 0 = base)."""
    with torch.no_grad():
        layer.vec_d.fill_(d)
        layer.vec_b.fill_(b)


def wrap_targets(
    model: nn.Module,
    targets: TargetSpec,
    make: Callable[[str, nn.Linear], Wrapped],
    layer_types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
) -> list[tuple[str, Wrapped]]:
    """Replace every target linear layer (or 1x1 convolution, unless ``layer_types`` leaves them out) of
    ``model`` by ``make(name, layer)`` (a low-rank layer, an adapter, ...); returns the new layers."""
    wrapped = []
    for name in match_targets(model, targets, layer_types):
        layer = make(name, model.get_submodule(name))
        replace_module(model, name, layer)
        wrapped.append((name, layer))
    return wrapped


def low_rank_layers(model: nn.Module) -> list[tuple[str, LowRankLinear]]:
    return [(name, m) for name, m in adapter_layers(model) if isinstance(m, LowRankLinear)]


def vector_param_groups(model: nn.Module, decay_vectors: bool) -> list[dict[str, Any]]:
    """The default optimizer groups, with the layers' vectors d and b in the weight-decay group when
    ``decay_vectors`` (the ELoRA/AFLoRA authors' optimizer decays them; 1-D tensors are otherwise exempt)."""
    vectors = [v for _, layer in low_rank_layers(model) for v in layer.vectors()] if decay_vectors else []
    return default_param_groups(model, vectors)


def wrap_with_vectors(
    model: nn.Module, targets: TargetSpec, rank: int, d_init: float, b_init: float, init: str = "lora"
) -> list[tuple[str, LowRankLinear]]:
    """The ELoRA/AFLoRA layer y = W0 x + b ⊙ B(d ⊙ A x) on every target, vectors trainable, scale 1.
    The caller decides what A and B are and whether they train."""
    layers = wrap_targets(
        model, targets, lambda name, layer: LowRankLinear(layer, rank, vectors=True, init=init)
    )
    for _, layer in layers:
        init_vectors(layer, d_init, b_init)
    return layers
