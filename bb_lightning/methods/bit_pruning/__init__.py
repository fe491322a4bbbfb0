"""BitPruning (Nikolić et al., 2020): a learned real-valued bitlength per tensor or channel on a min-max grid.

The folder holds everything of the method: `config`, `quantizer`, its kernel (`kernels.fractional_quantize`) and its
`regularizer` (the bit costs and budgets); registered here, in one place.
"""

from ..._registry import register_method
from .config import BitPruningConfig, Granularity, Rounding
from .quantizer import BitPruningQuantizer
from .regularizer import BitCostConfig, BitCostKind, BitCostRegularizer, BudgetMode

register_method(
    "bit_pruning", config=BitPruningConfig, quantizer=BitPruningQuantizer, cost_config=BitCostConfig,
    regularizer=BitCostRegularizer,
)

__all__ = [
    "BitCostConfig", "BitCostKind", "BitCostRegularizer", "BitPruningConfig", "BitPruningQuantizer", "BudgetMode",
    "Granularity", "Rounding",
]
