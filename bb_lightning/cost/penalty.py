"""A cost-weighted sum of per-quantizer penalties ``strength * sum_k R_k``, for methods whose quantizers define one.

Each quantizer gets a cost weight (its ``cost_scale``) once, at set-up:

* ``bops``: ``MACs_l / max_l MACs_l`` for the weight and the input quantizer of layer ``l`` (Bayesian Bits spec 3.3);
* ``memory``: ``params_l / max_l params_l`` for weight quantizers; input quantizers get 0 (not penalised);
* ``expected_bops``: no per-quantizer weight: the method's regulariser computes the expected BOPs of the whole
  network, ``sum_l MACs_l * E[b_w,l] * E[b_a,l] * E[kept_l]``, in percent of w32a32 (a method that cannot raises
  `BBConfigError`).

The method turns its cost weight into its own penalty (`QuantizerBase.penalty`). Quantizers are grouped once by
`QuantizerBase.penalty_key`, and each group is summed by `CostRegularizer.group_penalty` (one call per group; a
method's subclass vectorises it, e.g. `bb_lightning.methods.bayesian_bits.regularizer`). The sum is not divided by
the number of quantizers or the dataset size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from .._validate import enum_value, non_negative
from ..errors import BBConfigError
from ..methods.base import QuantizerBase, Regularizer
from .record import LayerRecord


class CostKind(str, Enum):
    BOPS = "bops"
    MEMORY = "memory"
    EXPECTED_BOPS = "expected_bops"


@dataclass
class CostConfig:
    """The cost-weighted penalty: ``strength * sum_k R_k`` with cost weights from BOPs or weight memory.

    Args:
        kind: ``"bops"`` (cost weight ``MACs_k / max MACs``, weights and inputs), ``"memory"`` (cost weight
            ``params_k / max params``, weights only; inputs are not penalised) or ``"expected_bops"`` (the expected
            relative BOPs of the network in percent, product of weight and input bits; methods that support it).
        strength: the multiplier of the summed penalties (Bayesian Bits: the paper's ``mu``, >= 0).
    """

    kind: CostKind | str = CostKind.BOPS
    strength: float = 0.01

    def __post_init__(self) -> None:
        self.kind = enum_value(CostKind, "regularizer", self.kind)
        self.strength = non_negative("strength", self.strength)


class CostRegularizer(Regularizer):
    """Holds ``(quantizer, cost_scale)`` pairs; calling it returns ``strength * sum_k penalty_k`` (0-dim tensor)."""

    #: whether the subclass computes ``kind="expected_bops"`` (by overriding `raw`)
    supports_expected_bops = False

    def __init__(
        self, records: list[LayerRecord], modules: Mapping[str, nn.Module], cost: CostConfig, input_bits: int = 8
    ) -> None:
        if cost.kind == CostKind.EXPECTED_BOPS and not self.supports_expected_bops:
            raise BBConfigError(
                f"`regularizer='expected_bops'` is not supported by `{type(self).__name__}`; use 'bops' or 'memory'."
            )
        self.cost = cost
        self.scale = 1.0  # schedule multiplier (warm-up / ramp), set by the callback
        max_macs = max((r.macs for r in records), default=1) or 1
        max_params = max((r.params for r in records), default=1) or 1
        self.terms: list[tuple[QuantizerBase, float]] = []
        for rec in records:
            m = modules.get(rec.name)
            if not rec.wrapped or m is None:
                continue
            if cost.kind != CostKind.MEMORY:
                w_scale = a_scale = rec.macs / max_macs
            else:
                w_scale, a_scale = rec.params / max_params, 0.0
            self.terms.append((m.weight_quantizer, w_scale))
            if m.input_quantizer is not None:
                self.terms.append((m.input_quantizer, a_scale))
        # grouped once by penalty key: one `group_penalty` call per group and step
        self._groups: dict[Any, tuple[list[QuantizerBase], list[float]]] = {}
        for q, scale in self.terms:
            qs, cs = self._groups.setdefault(q.penalty_key(), ([], []))
            qs.append(q)
            cs.append(scale)
        self._caches: dict[Any, dict] = {}

    def group_penalty(self, quantizers: list[QuantizerBase], scales: list[float], cache: dict) -> Tensor:
        """``sum_k penalty_k(scale_k)`` over one group of quantizers with the same `penalty_key`; ``cache`` (one
        per group, kept between calls) may hold constant tensors. Default: one `QuantizerBase.penalty` each."""
        return torch.stack([q.penalty(s) for q, s in zip(quantizers, scales)]).sum()

    def raw(self) -> Tensor:
        """``sum_k R_k`` without the strength (the quantity of the Bayesian Bits spec's table 3.7)."""
        parts = [
            self.group_penalty(qs, cs, self._caches.setdefault(key, {})) for key, (qs, cs) in self._groups.items()
        ]
        return torch.stack(parts).sum()

    @property
    def strength(self) -> float:
        """The strength in effect: ``cost.strength`` times the schedule multiplier ``scale``."""
        return self.cost.strength * self.scale

    def __call__(self) -> Tensor:
        return self.strength * self.raw()

    def value(self) -> Tensor:
        """``sum_k R_k`` (detached), for logging."""
        with torch.no_grad():
            return self.raw()


__all__ = ["CostConfig", "CostKind", "CostRegularizer"]
