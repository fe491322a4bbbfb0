"""Uniform-precision baselines (``"fixed_bits"``): every weight at ``weight_bits``, every input at ``input_bits``.

Registered like any searched method, so the shared wrapping, cost model, export and Lightning glue run it; it has no
penalty (its regulariser is the cost-weighted sum of zero penalties). Use it through the generic callback::

    QuantizationSearch(FixedBitsConfig(weight_bits=4, input_bits=4), CostConfig(strength=0))
"""

from ..._registry import register_method
from ...cost.penalty import CostConfig, CostRegularizer
from .config import FixedBitsConfig
from .quantizer import FixedBitsQuantizer

register_method(
    "fixed_bits", config=FixedBitsConfig, quantizer=FixedBitsQuantizer, cost_config=CostConfig,
    regularizer=CostRegularizer,
)

__all__ = ["FixedBitsConfig", "FixedBitsQuantizer"]
