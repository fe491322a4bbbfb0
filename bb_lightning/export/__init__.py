"""The exported result of a search (`MixedPrecisionConfig`) and turning it into a fixed model."""

from .apply import apply_config
from .build import build_config
from .check import check_model
from .config import MixedPrecisionConfig

__all__ = ["MixedPrecisionConfig", "apply_config", "build_config", "check_model"]
