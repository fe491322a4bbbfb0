"""The only door from `bb_lightning.deploy` into the rest of the project: the public export API and the fixed
quantizers' maths. Everything deploy needs from elsewhere is re-exported here, so a re-layout touches one file."""

from __future__ import annotations

from .._io import atomic_write, unique_path
from .._registry import register_hook
from ..core.fake_quant import CLIP_SHRINK, FLOAT_BITS, effective_range, num_steps
from ..core.fake_quant import scale as symmetric_scale
from ..core.minmax import MIN_SPAN
from ..errors import BBConfigError, UnsupportedLayerError
from ..export import MixedPrecisionConfig, apply_config
from ..methods.fixed import FixedMinMaxQuantizer, FixedQuantizer
from ..wrap.bn_fold import FoldedBatchNorm, bn_scale, fold_pairs
from ..wrap.adapters import get_adapter
from ..wrap.layers import is_wrapped, unwrap_layer

__all__ = [
    "CLIP_SHRINK",
    "FLOAT_BITS",
    "MIN_SPAN",
    "BBConfigError",
    "FixedMinMaxQuantizer",
    "FixedQuantizer",
    "FoldedBatchNorm",
    "MixedPrecisionConfig",
    "UnsupportedLayerError",
    "apply_config",
    "atomic_write",
    "bn_scale",
    "effective_range",
    "fold_pairs",
    "get_adapter",
    "is_wrapped",
    "num_steps",
    "register_hook",
    "symmetric_scale",
    "unique_path",
    "unwrap_layer",
]
