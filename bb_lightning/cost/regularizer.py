"""The training-time regulariser ``strength * sum_k R_k`` over every quantizer of a wrapped model.

Each quantizer gets a cost weight (its ``cost_scale``) once, at set-up:

* ``bops``: ``MACs_l / max_l MACs_l`` for the weight and the input quantizer of layer ``l`` (spec 3.3);
* ``memory``: ``params_l / max_l params_l`` for weight quantizers; input quantizers get 0 (not penalised).

The method turns its cost weight into its own penalty (``QuantizerBase.penalty``); for Bayesian Bits that is the
nested-probability form of spec 3.2. The sum is not divided by the number of quantizers or the dataset size.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..config import CostConfig, CostKind
from ..wrap.swap import LayerRecord


class CostRegularizer:
    """Holds ``(quantizer, cost_scale)`` pairs; calling it returns ``strength * sum_k penalty_k`` (0-dim tensor)."""

    def __init__(
        self, records: list[LayerRecord], modules: Mapping[str, nn.Module], cost: CostConfig, input_bits: int = 8
    ) -> None:
        self.cost = cost
        self.scale = 1.0  # schedule multiplier (warm-up / ramp), set by the callback
        max_macs = max((r.macs for r in records), default=1) or 1
        max_params = max((r.params for r in records), default=1) or 1
        self.terms: list[tuple[nn.Module, float]] = []
        self._caches: dict[tuple, dict] = {}
        for rec in records:
            m = modules.get(rec.name)
            if not rec.wrapped or m is None:
                continue
            if cost.kind == CostKind.BOPS:
                w_scale = a_scale = rec.macs / max_macs
            else:
                w_scale, a_scale = rec.params / max_params, 0.0
            self.terms.append((m.weight_quantizer, w_scale))
            if m.input_quantizer is not None:
                self.terms.append((m.input_quantizer, a_scale))
        # grouped once: classes with a `batched_penalty` are summed in one call per (class, bit chain)
        self._groups: dict[tuple, tuple[list[nn.Module], list[float]]] = {}
        self._loose: list[tuple[nn.Module, float]] = []
        for q, scale in self.terms:
            if hasattr(type(q), "batched_penalty"):
                qs, cs = self._groups.setdefault((type(q), getattr(q, "bits", None)), ([], []))
                qs.append(q)
                cs.append(scale)
            else:
                self._loose.append((q, scale))

    @property
    def strength(self) -> float:
        """The strength ``mu`` in effect (multiplies `raw` in the loss); read-only."""
        return float(self.cost.strength)

    def raw(self) -> Tensor:
        """``sum_k R_k`` without the strength (the quantity of the spec's table 3.7).

        Quantizer classes with a ``batched_penalty(quantizers, scales)`` static method are summed in one call per
        class (a few tensor ops instead of a few per quantizer); others through their ``penalty``.
        """
        parts = [
            type(qs[0]).batched_penalty(qs, cs, self._caches.setdefault(key, {}))
            for key, (qs, cs) in self._groups.items()
        ] + [q.penalty(scale) for q, scale in self._loose]
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

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        pass
