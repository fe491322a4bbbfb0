"""Bayesian Bits (van Baalen et al., NeurIPS 2020): gated residual doubling of a 2-bit base grid.

The folder holds everything of the method: `config`, `quantizer`, its kernels (`hard_concrete` gates, the CPU fast
path `host_path`) and its `regularizer`; registered here, in one place.
"""

from ..._registry import register_method
from ...cost.penalty import CostConfig
from .config import BayesianBitsConfig
from .quantizer import BayesianBitsQuantizer
from .regularizer import BayesianBitsRegularizer

register_method(
    "bayesian_bits", config=BayesianBitsConfig, quantizer=BayesianBitsQuantizer, cost_config=CostConfig,
    regularizer=BayesianBitsRegularizer,
)

__all__ = ["BayesianBitsConfig", "BayesianBitsQuantizer", "BayesianBitsRegularizer", "CostConfig"]
