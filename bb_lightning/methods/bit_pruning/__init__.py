"""BitPruning (Nikolić et al., 2020): a learned real-valued bitlength per tensor or channel on a min-max grid."""

from .config import BitPruningConfig, Granularity, Rounding
from .quantizer import BitPruningQuantizer

__all__ = ["BitPruningConfig", "BitPruningQuantizer", "Granularity", "Rounding"]
