"""The built-in searched methods through the conformance harness (`contract.QuantizerContract`)."""

from __future__ import annotations

from contract import QuantizerContract

from bb_lightning.methods.bayesian_bits import BayesianBitsConfig
from bb_lightning.methods.bit_pruning import BitPruningConfig


class TestBayesianBitsContract(QuantizerContract):
    method = "bayesian_bits"

    def make_config(self):
        return BayesianBitsConfig(gate_init=0.5, prune_init=1.0)  # fractional gates: every parameter is live


class TestBitPruningContract(QuantizerContract):
    method = "bit_pruning"

    def make_config(self):
        return BitPruningConfig(init_bits=5.5)


class TestBitPruningPerChannelContract(QuantizerContract):
    method = "bit_pruning"

    def make_config(self):
        return BitPruningConfig(init_bits=4.5, weight_granularity="group", group_size=2)


class TestBitPruningLearnedRangesContract(QuantizerContract):
    method = "bit_pruning"

    def make_config(self):
        return BitPruningConfig(init_bits=3.5, weight_granularity="channel", learn_ranges=True)


class TestBitPruningSymmetricWeightsContract(QuantizerContract):
    method = "bit_pruning"

    def make_config(self):
        return BitPruningConfig(init_bits=3.5, weight_grid="symmetric")


class TestBitPruningSymmetricLearnedRangesContract(QuantizerContract):
    method = "bit_pruning"

    def make_config(self):
        return BitPruningConfig(init_bits=2.6, weight_grid="symmetric", learn_ranges=True)
