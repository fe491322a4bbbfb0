"""Uniform-precision baselines: every weight at ``weight_bits`` and every input at ``input_bits``, learned ranges.

Registered as the method ``"fixed_bits"``, so the shared wrapping, cost model, export and Lightning glue run it like
any searched method (it has no penalty). Use it through the generic callback::

    QuantizationCallback("fixed_bits", FixedBitsConfig(weight_bits=4, input_bits=4), WrapConfig(), CostConfig(strength=0))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._registry import register_method
from ..errors import BBConfigError
from .base import Role
from .fixed import FixedQuantizer


@dataclass
class FixedBitsConfig:
    """Bit widths of a uniform-precision baseline (1 .. 32; 32 = float)."""

    weight_bits: int = 8
    input_bits: int = 8

    def __post_init__(self) -> None:
        for name in ("weight_bits", "input_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 32:
                raise BBConfigError(f"Expected argument `{name}` to be an int in [1, 32], but got {v!r}.")


@register_method("fixed_bits", config=FixedBitsConfig)
class FixedBitsQuantizer(FixedQuantizer):
    """`FixedQuantizer` whose range is initialised from data (weights: now; inputs: first training batch) and learned
    with straight-through gradients, like the ranges of Bayesian Bits."""

    def __init__(
        self, config: FixedBitsConfig, role: Role, num_channels: int | None = None, prune: bool | None = None
    ) -> None:
        super().__init__(role, config.weight_bits if role == "weight" else config.input_bits, False, 1.0)
        self.initialized.fill_(False)
        self._initialized = False

    def forward(self, x: Tensor) -> Tensor:
        if not self._initialized:
            if not self.training:
                return x  # not calibrated yet: pass through
            self.init_range(x)
        return super().forward(x)

    def penalty(self, cost_scale: float) -> Tensor:
        return torch.zeros((), device=self.x_max.device)
