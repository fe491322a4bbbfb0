"""Settings of the uniform-precision baseline."""

from __future__ import annotations

from dataclasses import dataclass

from ..._validate import int_in


@dataclass
class FixedBitsConfig:
    """Bit widths of a uniform-precision baseline (1 .. 32; 32 = float)."""

    weight_bits: int = 8
    input_bits: int = 8

    def __post_init__(self) -> None:
        self.weight_bits = int_in("weight_bits", self.weight_bits, 1, 32)
        self.input_bits = int_in("input_bits", self.input_bits, 1, 32)
