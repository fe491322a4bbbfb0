"""The uniform-precision baseline ``fixed_bits`` through the conformance harness; added without touching any shared
code (the harness and the method existed already), as `docs/contributing.md` describes for a new method."""

from __future__ import annotations

from contract import QuantizerContract

from bb_lightning.methods.fixed_bits import FixedBitsConfig


class TestFixedBitsContract(QuantizerContract):
    method = "fixed_bits"

    def make_config(self):
        return FixedBitsConfig(weight_bits=4, input_bits=6)


class TestFixedBitsFloatContract(QuantizerContract):
    method = "fixed_bits"

    def make_config(self):
        return FixedBitsConfig(weight_bits=32, input_bits=8)
