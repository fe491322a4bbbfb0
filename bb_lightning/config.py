"""Shared, method-agnostic settings: which layers to wrap (`WrapConfig`) and the cost (`CostConfig`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from .errors import BBConfigError


class CostKind(str, Enum):
    BOPS = "bops"
    MEMORY = "memory"


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


def _enum(cls: type[Enum], name: str, value: object) -> Enum:
    try:
        return cls(value.value if isinstance(value, Enum) else value)
    except ValueError:
        choices = [m.value for m in cls]  # type: ignore[attr-defined]
        raise BBConfigError(f"Expected argument `{name}` to be one of {choices}, but got {value!r}.") from None


def _patterns(name: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise BBConfigError(f"Expected argument `{name}` to be a list of module-name patterns, but got {value!r}.")


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
        self.first_layer = _enum(FirstLayer, "first_layer", self.first_layer)
        self.last_layer = _enum(LastLayer, "last_layer", self.last_layer)
        self.fold_bn = _enum(FoldBN, "fold_bn", self.fold_bn)
        self.include_patterns = _patterns("include", self.include)
        self.exclude_patterns = _patterns("exclude", self.exclude)
        if not isinstance(self.quantize_activations, bool):
            raise BBConfigError(
                f"Expected argument `quantize_activations` to be true or false, but got {self.quantize_activations!r}."
            )
        if isinstance(self.input_bits, bool) or not isinstance(self.input_bits, int) or not 1 <= self.input_bits <= 32:
            raise BBConfigError(f"Expected argument `input_bits` to be an int in [1, 32], but got {self.input_bits!r}.")


@dataclass
class CostConfig:
    """The regulariser: ``strength * sum_k R_k`` with cost weights from BOPs or weight memory.

    Args:
        kind: ``"bops"`` (cost weight ``MACs_k / max MACs``, weights and inputs) or ``"memory"`` (cost weight
            ``params_k / max params``, weights only; inputs are not penalised).
        strength: the paper's ``mu`` (>= 0).
    """

    kind: CostKind | str = CostKind.BOPS
    strength: float = 0.01

    def __post_init__(self) -> None:
        self.kind = _enum(CostKind, "regularizer", self.kind)
        if (
            isinstance(self.strength, bool)
            or not isinstance(self.strength, (int, float))
            or not 0 <= self.strength < float("inf")
        ):
            raise BBConfigError(f"Expected argument `strength` to be a finite float >= 0, but got {self.strength!r}.")
        self.strength = float(self.strength)
