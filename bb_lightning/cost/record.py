"""`LayerRecord`: the plan of one conv/linear layer (shape, MACs, policy), shared by wrapping, costs and export."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..core.fake_quant import FLOAT_BITS


@dataclass
class LayerRecord:
    """One conv/linear layer of the plan. ``wrapped=False`` layers stay float but still count in the cost."""

    name: str
    type: str
    weight_shape: tuple[int, ...]
    macs: int
    wrapped: bool
    quantize_input: bool
    prune: bool
    is_first: bool = False
    is_last: bool = False
    input_numel: int = 0  # per-sample input elements (activation memory)
    bn: str | None = None  #: name of the BatchNorm folded into this layer (see `bb_lightning.wrap.bn_fold`)
    fold_bn: str = "none"  #: how it is folded: "train" or "static"
    #: the layer whose output channels are this layer's input channels (`bb_lightning.cost.channels`), if any
    producer: str | None = None

    @property
    def params(self) -> int:
        n = 1
        for d in self.weight_shape:
            n *= d
        return n

    def float_input_bits(self, input_bits: int) -> int:
        """Bits counted for this layer's input when no quantizer covers it: the network input (first layer) counts
        at ``input_bits``, any other float input at 32 (Bayesian Bits spec 4.1). The one place of this rule."""
        return float_input_bits(self.is_first, input_bits)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weight_shape"] = list(self.weight_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerRecord:
        return cls(**{**d, "weight_shape": tuple(d["weight_shape"])})


def float_input_bits(is_first: bool, input_bits: int) -> int:
    """``input_bits`` for the first layer's unquantized input (the data), else ``FLOAT_BITS``."""
    return input_bits if is_first else FLOAT_BITS


__all__ = ["LayerRecord", "float_input_bits"]
