"""``FixedBitsQuantizer``: a fixed bit width with a range learned from data, like the ranges of Bayesian Bits."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import Role
from ..fixed import FixedQuantizer
from .config import FixedBitsConfig


class FixedBitsQuantizer(FixedQuantizer):
    """`FixedQuantizer` whose range is initialised from its first training-mode input (``x_max=None``) and learned
    with straight-through gradients."""

    def __init__(
        self, config: FixedBitsConfig, role: Role, num_channels: int | None = None, prune: bool | None = None
    ) -> None:
        super().__init__(role, config.weight_bits if role == "weight" else config.input_bits, False, None)

    def penalty(self, cost_scale: float) -> Tensor:
        return torch.zeros((), device=self.x_max.device)
