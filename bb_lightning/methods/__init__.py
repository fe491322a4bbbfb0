"""Quantization methods, one folder each (config, quantizer, kernels, regulariser; registered in its ``__init__``),
behind the interfaces of `bb_lightning.methods.base`; `bb_lightning.methods.fixed` holds the fixed quantizers the
export installs. Importing this package registers the built-in methods."""

from . import bayesian_bits  # noqa: F401  (registers "bayesian_bits")
from . import bit_pruning  # noqa: F401  (registers "bit_pruning")
from . import fixed_bits  # noqa: F401  (registers "fixed_bits", the uniform-precision baseline)
from .base import QuantizerBase, Regularizer
from .fixed import FixedMinMaxQuantizer, FixedQuantizer

__all__ = ["FixedMinMaxQuantizer", "FixedQuantizer", "QuantizerBase", "Regularizer"]
