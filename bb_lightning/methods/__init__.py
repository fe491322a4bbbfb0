"""Quantization methods. Importing this package registers the built-in ones."""

from . import bayesian_bits  # noqa: F401  (registers "bayesian_bits")
from . import bit_pruning  # noqa: F401  (registers "bit_pruning")
from . import fixed_bits  # noqa: F401  (registers "fixed_bits", the uniform-precision baseline)
from .base import QuantizerBase
from .fixed import FixedQuantizer

__all__ = ["QuantizerBase", "FixedQuantizer"]
