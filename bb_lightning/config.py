"""Shared, method-agnostic settings: which layers to wrap (`WrapConfig`). A method's regulariser settings live in its
folder (e.g. `bb_lightning.methods.bit_pruning.BitCostConfig`) or, for per-quantizer penalties, in
`bb_lightning.cost.penalty.CostConfig`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from ._validate import boolean, enum_value, int_in, patterns


class FirstLayer(str, Enum):
    WEIGHTS_ONLY = "weights_only"  #: quantize weights; the network input stays float, counted at ``input_bits``
    FULL = "full"  #: quantize weights and input like any other layer
    FLOAT = "float"  #: leave the layer float (counted at 32-bit weights)


class FoldBN(str, Enum):
    NONE = "none"  #: leave BatchNorm alone
    TRAIN = "train"  #: training-time folding (spec 5.5): quantize the folded weight, batch statistics in training
    STATIC = "static"  #: fold the running statistics once (fine-tuning, export)


class LastLayer(str, Enum):
    NO_PRUNE = "no_prune"  #: quantize weights and input, but never prune the classifier's outputs
    FULL = "full"  #: like any other layer
    FLOAT = "float"  #: leave the layer float


@dataclass
class WrapConfig:
    """Which conv/linear layers get quantizers, and how.

    Args:
        include: ``fnmatch`` patterns of module names (relative to the model) to wrap; ``None`` = every candidate.
        exclude: patterns of module names to leave alone.
        first_layer: policy for the first layer that runs (see `FirstLayer`).
        last_layer: policy for the last layer that runs, usually the classifier (see `LastLayer`).
        quantize_activations: attach input quantizers (otherwise weights only; inputs counted at 32 bits).
        input_bits: bit width assumed for the unquantized network input in BOPs (spec 4.1: 8).
        fold_bn: fold a BatchNorm that follows a wrapped conv/linear into it, so the folded weight is quantized:
            ``"none"``, ``"train"`` or ``"static"`` (see `FoldBN` and `bb_lightning.wrap.bn_fold`).
    """

    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    first_layer: FirstLayer | str = FirstLayer.WEIGHTS_ONLY
    last_layer: LastLayer | str = LastLayer.NO_PRUNE
    quantize_activations: bool = True
    input_bits: int = 8
    fold_bn: FoldBN | str = FoldBN.NONE
    include_patterns: tuple[str, ...] = field(init=False, repr=False)
    exclude_patterns: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.first_layer = enum_value(FirstLayer, "first_layer", self.first_layer)
        self.last_layer = enum_value(LastLayer, "last_layer", self.last_layer)
        self.fold_bn = enum_value(FoldBN, "fold_bn", self.fold_bn)
        self.include_patterns = patterns("include", self.include)
        self.exclude_patterns = patterns("exclude", self.exclude)
        self.quantize_activations = boolean("quantize_activations", self.quantize_activations)
        self.input_bits = int_in("input_bits", self.input_bits, 1, 32)
