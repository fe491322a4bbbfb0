"""bb_lightning: learned mixed-precision quantization and pruning for timm models in PyTorch Lightning.

Public API (stable): `BayesianBits` and `BitPruning` (callbacks), `CostRegularizerMixin` (LightningModule mixin),
`MixedPrecisionConfig` (the exported result) and `apply_config` (float model -> fixed mixed precision);
`export_onnx`, `ort_session` and `to_deploy_model` (a deployable ONNX / PyTorch model, `bb_lightning.deploy`).
"""

from . import methods as _methods  # noqa: F401  (registers the built-in methods)
from .app import models as _models  # noqa: F401  (registers the timm models bb_lenet5, bb_vgg7)
from ._registry import get_method as get_method
from ._registry import list_methods as list_methods
from ._registry import register_method as register_method
from .deploy import export_onnx as export_onnx
from .deploy import ort_session as ort_session
from .deploy import to_deploy_model as to_deploy_model
from .errors import BBConfigError as BBConfigError
from .errors import NonFiniteError as NonFiniteError
from .errors import UnsupportedLayerError as UnsupportedLayerError
from .export import MixedPrecisionConfig as MixedPrecisionConfig
from .export import apply_config as apply_config
from .plugin import BayesianBits as BayesianBits
from .plugin import BitPruning as BitPruning
from .plugin import CostRegularizerMixin as CostRegularizerMixin
from .plugin import NonFiniteGuard as NonFiniteGuard
from .plugin import QuantizationSearch as QuantizationSearch
from .version import __version__ as __version__
from .wrap.adapters import LayerAdapter as LayerAdapter
from .wrap.adapters import register_layer_adapter as register_layer_adapter

__all__ = [
    "BBConfigError",
    "BayesianBits",
    "BitPruning",
    "CostRegularizerMixin",
    "LayerAdapter",
    "MixedPrecisionConfig",
    "NonFiniteError",
    "NonFiniteGuard",
    "QuantizationSearch",
    "UnsupportedLayerError",
    "__version__",
    "apply_config",
    "export_onnx",
    "get_method",
    "list_methods",
    "ort_session",
    "register_layer_adapter",
    "register_method",
    "to_deploy_model",
]
