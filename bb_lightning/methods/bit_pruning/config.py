"""Method-specific settings of BitPruning, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from ..._validate import enum_value, int_at_least, number_in
from ...errors import BBConfigError


class Granularity(str, Enum):
    TENSOR = "tensor"  #: one bitlength per tensor (the paper's headline setting)
    CHANNEL = "channel"  #: one bitlength (and one min-max range) per output channel of a weight
    GROUP = "group"  #: one bitlength per ``group_size`` consecutive output channels (ranges per channel)


class WeightGrid(str, Enum):
    MINMAX = "minmax"  #: the paper's affine grid: ``2^b`` levels from ``lo`` to ``hi`` (0 is not a level)
    SYMMETRIC = "symmetric"  #: ``2^b - 1`` levels ``-(2^(b-1)-1) .. 2^(b-1)-1`` times ``2u / (2^b - 1)``, 0 a level


class Rounding(str, Enum):
    CEIL = "ceil"  #: ``ceil(n - rounding_eps)``: conservative, never loses more than ``rounding_eps`` bits
    ROUND = "round"  #: nearest integer
    FLOOR = "floor"  #: ``floor(n)``: aggressive


@dataclass
class BitPruningConfig:
    """Settings of one BitPruning quantizer.

    Args:
        init_bits: initial bitlength ``n`` of every site (spec: 8; "budget + 0.5" speeds up budgeted searches).
        min_bits: lower bound of ``n`` (>= 1; spec default 2).
        max_bits: upper bound of ``n`` (<= 16).
        weight_granularity: ``"tensor"``, ``"channel"`` or ``"group"`` (weights only; inputs are always per tensor).
        group_size: output channels per bitlength with ``"group"``.
        rounding: how ``n`` becomes an integer at the end of the search (``"ceil"``, ``"round"``, ``"floor"``).
        rounding_eps: slack of ``"ceil"``: ``b = ceil(n - rounding_eps)`` (e.g. 4.03 -> 4).
        ema_momentum: momentum of the running min/max of input activations (weights use their live min/max).
        learn_ranges: learn each range ``(lo, hi)`` from its min-max start with straight-through gradients (the
            ``"ranges"`` optimizer group), instead of the paper's min-max statistics (spec R3: at 2-3 bits a min-max
            range spends levels on outliers). The lower end of an unsigned tensor (``min >= 0``) stays fixed.
        weight_grid: the weights' grid: ``"minmax"`` (the paper's affine grid from ``min(w)`` to ``max(w)``) or
            ``"symmetric"`` (``[-u, u]`` with ``u = max|w|``, or learned from there with ``learn_ranges``; 0 is a
            level, as on Bayesian Bits' and the uniform baselines' grids: spec 1.2's signed variant). Per-tensor
            bitlengths and ``min_bits >= 2`` only (the 1-bit symmetric grid is ``{0}``). Inputs keep min-max grids.
    """

    init_bits: float = 8.0
    min_bits: float = 2.0
    max_bits: float = 8.0
    weight_granularity: Granularity | str = Granularity.TENSOR
    group_size: int = 8
    rounding: Rounding | str = Rounding.CEIL
    rounding_eps: float = 0.05
    ema_momentum: float = 0.9
    learn_ranges: bool = False
    weight_grid: WeightGrid | str = WeightGrid.MINMAX

    def __post_init__(self) -> None:
        self.min_bits = number_in("min_bits", self.min_bits, 1, 16)
        self.max_bits = number_in("max_bits", self.max_bits, 1, 16)
        if self.max_bits < self.min_bits:
            raise BBConfigError(f"Expected `min_bits` <= `max_bits`, but got {self.min_bits} > {self.max_bits}.")
        self.init_bits = number_in("init_bits", self.init_bits, self.min_bits, self.max_bits)
        self.weight_granularity = enum_value(Granularity, "weight_granularity", self.weight_granularity)
        self.group_size = int_at_least("group_size", self.group_size, 1)
        self.rounding = enum_value(Rounding, "rounding", self.rounding)
        self.rounding_eps = number_in("rounding_eps", self.rounding_eps, 0.0, 0.5)
        self.ema_momentum = number_in("ema_momentum", self.ema_momentum, 0.0, 0.9999)
        if not isinstance(self.learn_ranges, bool):
            raise BBConfigError(f"Expected `learn_ranges` to be a bool, but got {self.learn_ranges!r}.")
        self.weight_grid = enum_value(WeightGrid, "weight_grid", self.weight_grid)
        if self.weight_grid == WeightGrid.SYMMETRIC:
            if self.weight_granularity != Granularity.TENSOR:
                raise BBConfigError(
                    f"Expected `weight_granularity='tensor'` with `weight_grid='symmetric'` (one range and bitlength "
                    f"per weight tensor), but got {self.weight_granularity.value!r}."
                )
            if self.min_bits < 2:
                raise BBConfigError(
                    f"Expected `min_bits` >= 2 with `weight_grid='symmetric'` (its 1-bit grid holds only 0), but got "
                    f"{self.min_bits}."
                )
