"""Differentiable bit costs of a wrapped model, and the regulariser (fixed strength or budget) built on them.

Every quantizer exposes its differentiable bit width (`QuantizerBase.expected_bits`: 0-dim, or ``[C]`` per output
channel). With ``P_l`` weight parameters, ``A_l`` input elements and ``M_l`` MACs per sample of layer ``l`` and bit
widths ``w_l`` (weights) and ``a_l`` (input), the costs are (BitPruning spec 3.2)::

    average_bits          mean over quantized sites (weights and inputs) of their bits
    weight_memory         sum_l P_l * w_l
    activation_memory     sum_l A_l * a_l
    bops                  sum_l M_l * w_l * a_l            (bit-parallel)
    bitserial_weight      sum_l M_l * w_l                  (one operand bit-serial)
    bitserial_activation  sum_l M_l * a_l

Each is divided by its float32 value (all widths 32), so ``1.0`` means "everything float" and strengths transfer
across models. Float layers count at 32 bits and the unquantized network input at ``input_bits``, as in
`bb_lightning.cost.facts`, so at integer bit widths ``bops`` equals the reported relative BOPs. Per-channel widths
count each channel with its share ``1/C`` of the layer's parameters and MACs.

The regulariser is ``strength * cost`` (``target=None``), or, with a budget ``target`` (bits for
``average_bits``, otherwise the fraction of float32, e.g. ``1/64`` for w4a4-equivalent BOPs):

* ``budget_mode="hinge"``: ``strength * relu(cost / target - 1)^2`` (no pressure once under budget);
* ``budget_mode="dual"``: ``lam * cost / target`` with ``lam <- max(0, lam + dual_lr * (cost / target - 1))`` in
  `BitCostRegularizer.update` (dual ascent, ``lam`` starts at ``strength``; kept on the device, no host sync). The
  search callback calls ``update()`` once per training step, right after the loss; computing the penalty itself
  changes no state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from ..._validate import enum_value, non_negative, positive
from ...core.fake_quant import FLOAT_BITS
from ...cost.record import LayerRecord
from ...errors import BBConfigError
from ..base import Regularizer


class BitCostKind(str, Enum):
    AVERAGE_BITS = "average_bits"
    WEIGHT_MEMORY = "weight_memory"
    ACTIVATION_MEMORY = "activation_memory"
    BOPS = "bops"
    BITSERIAL_WEIGHT = "bitserial_weight"
    BITSERIAL_ACTIVATION = "bitserial_activation"


class BudgetMode(str, Enum):
    HINGE = "hinge"
    DUAL = "dual"


@dataclass
class BitCostConfig:
    """The bit-cost regulariser; see the module docstring.

    Args:
        kind: which cost (`BitCostKind`).
        strength: weight of the normalised cost (fixed mode and ``hinge``), or the initial multiplier (``dual``).
        target: budget in bits (``average_bits``) or as a fraction of float32 (other kinds); ``None`` = no budget.
        budget_mode: ``"hinge"`` or ``"dual"`` (only with a ``target``).
        dual_lr: step size of the dual ascent on the multiplier (per training step).
    """

    kind: BitCostKind | str = BitCostKind.BOPS
    strength: float = 0.1
    target: float | None = None
    budget_mode: BudgetMode | str = BudgetMode.HINGE
    dual_lr: float = 0.01

    def __post_init__(self) -> None:
        self.kind = enum_value(BitCostKind, "regularizer", self.kind)
        self.strength = non_negative("strength", self.strength)
        self.budget_mode = enum_value(BudgetMode, "budget_mode", self.budget_mode)
        self.dual_lr = positive("dual_lr", self.dual_lr)
        if self.target is not None:
            self.target = positive("target", self.target)
            limit = FLOAT_BITS if self.kind == BitCostKind.AVERAGE_BITS else 1.0
            if self.target > limit:
                unit = "bits" if self.kind == BitCostKind.AVERAGE_BITS else "fraction of float32"
                raise BBConfigError(
                    f"Expected argument `target` for regularizer `{self.kind.value}` "  # type: ignore[union-attr]
                    f"in ({unit}) to be at most "
                    f"{limit:g}, but got {self.target!r}."
                )

    @property
    def normalized_target(self) -> float | None:
        """The target on the normalised scale of the cost (``average_bits`` targets are divided by 32)."""
        if self.target is None:
            return None
        return self.target / FLOAT_BITS if self.kind == BitCostKind.AVERAGE_BITS else self.target


class BitCostRegularizer(Regularizer):
    """``strength * cost`` or a budget penalty over the expected bit widths of every quantizer (0-dim tensor)."""

    def __init__(
        self,
        records: list[LayerRecord],
        modules: Mapping[str, nn.Module],
        cost: BitCostConfig,
        input_bits: int = 8,
    ) -> None:
        self.cost = cost
        self.scale = 1.0  # schedule multiplier (warm-up / ramp), set by the callback
        self.weight_quantizers: list[nn.Module] = []
        self.input_quantizers: list[nn.Module] = []
        const_w: list[float] = []  # float weights: one 32-bit entry per layer
        const_a: list[float] = []
        w_layer: list[int] = []  # per learned-weight quantizer: layer index; expanded once the widths' sizes are known
        layer_a: list[tuple[str, int]] = []  # per layer: ("q", input quantizer index) or ("c", const index)
        self._macs = [float(r.macs) for r in records]
        self._params = [float(r.params) for r in records]
        self._numel = [float(r.input_numel) for r in records]
        self._const_layers: list[int] = []
        for i, rec in enumerate(records):
            m = modules.get(rec.name)
            wrapped = rec.wrapped and m is not None
            if wrapped:
                self.weight_quantizers.append(m.weight_quantizer)
                w_layer.append(i)
            else:
                const_w.append(FLOAT_BITS)
                self._const_layers.append(i)
            iq = m.input_quantizer if wrapped else None
            if iq is not None:
                layer_a.append(("q", len(self.input_quantizers)))
                self.input_quantizers.append(iq)
            else:
                layer_a.append(("c", len(const_a)))
                const_a.append(float(rec.float_input_bits(input_bits)))
        if not self.weight_quantizers:
            raise BBConfigError("The bit-cost regulariser found no quantized layer.")
        self._w_layer, self._layer_a, self._const_w, self._const_a = w_layer, layer_a, const_w, const_a
        self._dual: Tensor | None = None
        self._pending: Tensor | None = None  # the last penalty's cost / target, for the next dual step
        self._cache: dict[Any, dict[str, Tensor]] = {}

    # ----- constants, built once per device and width layout ---------------------------------------------------
    def _constants(self, sizes: tuple[int, ...], device: torch.device) -> dict[str, Tensor]:
        key = (sizes, device)
        if key in self._cache:
            return self._cache[key]
        n_aq = len(self.input_quantizers)
        coef_p, coef_m, a_of_w, site_w = [], [], [], []
        for layer, size in zip(self._w_layer, sizes):
            coef_p += [self._params[layer] / size] * size
            coef_m += [self._macs[layer] / size] * size
            site_w += [1.0 / size] * size
            a_of_w += [self._a_index(layer, n_aq)] * size
        for layer in self._const_layers:
            coef_p.append(self._params[layer])
            coef_m.append(self._macs[layer])
            a_of_w.append(self._a_index(layer, n_aq))
        f32 = dict(dtype=torch.float32, device=device)
        c = {
            "coef_p": torch.tensor(coef_p, **f32),
            "coef_m": torch.tensor(coef_m, **f32),
            "site_w": torch.tensor(site_w, **f32),
            "a_of_w": torch.tensor(a_of_w, dtype=torch.long, device=device),
            "a_of_layer": torch.tensor([self._a_index(i, n_aq) for i in range(len(self._macs))], device=device),
            "macs": torch.tensor(self._macs, **f32),
            "numel": torch.tensor(self._numel, **f32),
            "const_w": torch.tensor(self._const_w, **f32),
            "const_a": torch.tensor(self._const_a, **f32),
        }
        self._cache = {key: c}
        return c

    def _a_index(self, layer: int, n_aq: int) -> int:
        kind, j = self._layer_a[layer]
        return j if kind == "q" else n_aq + j

    # ----- the cost ------------------------------------------------------------------------------------------
    def raw(self) -> Tensor:
        """The normalised cost (fraction of its float32 value; 0-dim, differentiable in the bit widths)."""
        ws = [q.expected_bits().reshape(-1) for q in self.weight_quantizers]
        c = self._constants(tuple(int(w.numel()) for w in ws), ws[0].device)
        w = torch.cat(ws)
        a = torch.stack([q.expected_bits() for q in self.input_quantizers]) if self.input_quantizers else w[:0]
        kind = self.cost.kind
        if kind == BitCostKind.AVERAGE_BITS:
            sites = len(self.weight_quantizers) + len(self.input_quantizers)
            return (torch.dot(w, c["site_w"]) + a.sum()) / (sites * FLOAT_BITS)
        w_ext = torch.cat([w, c["const_w"]])
        a_ext = torch.cat([a, c["const_a"]])
        if kind == BitCostKind.WEIGHT_MEMORY:
            return torch.dot(w_ext, c["coef_p"]) / (FLOAT_BITS * float(sum(self._params)))
        if kind == BitCostKind.BITSERIAL_WEIGHT:
            return torch.dot(w_ext, c["coef_m"]) / (FLOAT_BITS * max(float(sum(self._macs)), 1.0))
        if kind == BitCostKind.BOPS:
            bops = torch.dot(w_ext * a_ext[c["a_of_w"]], c["coef_m"])
            return bops / (FLOAT_BITS * FLOAT_BITS * max(float(sum(self._macs)), 1.0))
        per_layer = a_ext[c["a_of_layer"]]
        if kind == BitCostKind.BITSERIAL_ACTIVATION:
            return torch.dot(per_layer, c["macs"]) / (FLOAT_BITS * max(float(sum(self._macs)), 1.0))
        return torch.dot(per_layer, c["numel"]) / (FLOAT_BITS * max(float(sum(self._numel)), 1.0))

    def value(self) -> Tensor:
        """The cost in reported units: bits for ``average_bits``, else the fraction of float32 (detached)."""
        with torch.no_grad():
            v = self.raw()
        return v * FLOAT_BITS if self.cost.kind == BitCostKind.AVERAGE_BITS else v

    @property
    def strength(self) -> float | Tensor:
        """The multiplier in effect: ``strength * schedule`` (a device tensor in dual mode)."""
        if self.cost.target is not None and self.cost.budget_mode == BudgetMode.DUAL:
            return self._multiplier(None) * self.scale
        return self.cost.strength * self.scale

    def _multiplier(self, device: torch.device | None) -> Tensor:
        if self._dual is None:
            self._dual = torch.tensor(self.cost.strength, device=device)
        elif device is not None and self._dual.device != device:
            self._dual = self._dual.to(device)
        return self._dual

    def __call__(self) -> Tensor:
        cost = self.raw()
        target = self.cost.normalized_target
        if target is None:
            return (self.cost.strength * self.scale) * cost
        ratio = cost / target
        if self.cost.budget_mode == BudgetMode.HINGE:
            return (self.cost.strength * self.scale) * torch.relu(ratio - 1.0).square()
        lam = self._multiplier(cost.device)
        penalty = (lam.clone() * self.scale) * ratio
        if self.scale > 0 and torch.is_grad_enabled():
            self._pending = ratio.detach()
        return penalty

    @torch.no_grad()
    def update(self) -> None:
        """Dual ascent on the multiplier from the last training penalty (on the device; no-op otherwise)."""
        if self._pending is not None and self._dual is not None:
            self._dual.add_(self.cost.dual_lr * (self._pending - 1.0)).clamp_(min=0.0)
        self._pending = None

    # ----- persistence (exact resume) ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {} if self._dual is None else {"dual": self._dual.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "dual" in state:
            self._dual = torch.as_tensor(state["dual"]).clone()
        self._pending = None


__all__ = ["BitCostConfig", "BitCostKind", "BitCostRegularizer", "BudgetMode"]
