"""Registry of quantization methods: ``@register_method(name, config=...)`` on a quantizer class."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from .errors import BBConfigError


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its quantizer class, its config class and (optionally) its own regulariser.

    ``cost_config``/``regularizer`` default to the gate-penalty regulariser of `bb_lightning.cost.regularizer`
    (``CostConfig``/``CostRegularizer``); a regulariser class is built as ``cls(records, modules, cost, input_bits)``.
    """

    name: str
    quantizer: type
    config: type
    cost_config: type | None = None
    regularizer: type | None = None

    def cost_classes(self) -> tuple[type, type]:
        """``(cost config class, regulariser class)`` of this method."""
        if self.cost_config is not None and self.regularizer is not None:
            return self.cost_config, self.regularizer
        from .config import CostConfig
        from .cost.regularizer import CostRegularizer

        return CostConfig, CostRegularizer


_METHODS: dict[str, MethodEntry] = {}


def register_method(
    name: str, config: type, cost_config: type | None = None, regularizer: type | None = None
) -> Any:
    """Class decorator registering a `bb_lightning.methods.base.QuantizerBase` subclass under ``name``.

    Args:
        name: the method's name (``"bayesian_bits"``, ``"bit_pruning"``, ...).
        config: the method's config dataclass; the quantizer is built as ``cls(config, role, channels, prune)``.
        cost_config: the method's regulariser settings class (with ``regularizer``; default: gate penalties).
        regularizer: the method's regulariser class, built as ``cls(records, modules, cost, input_bits)``.
    """
    if (cost_config is None) != (regularizer is None):
        raise BBConfigError(f"Method `{name}`: pass both `cost_config` and `regularizer`, or neither.")

    def deco(cls: type) -> type:
        if name in _METHODS and _METHODS[name].quantizer is not cls:
            warnings.warn(f"Overwriting quantization method `{name}` in the registry.", stacklevel=2)
        _METHODS[name] = MethodEntry(name, cls, config, cost_config, regularizer)
        cls.method = name
        return cls

    return deco


def get_method(name: str) -> MethodEntry:
    """The registry entry for ``name``; raises `BBConfigError` listing the known methods."""
    try:
        return _METHODS[name]
    except KeyError:
        raise BBConfigError(f"Unknown quantization method `{name}`. Registered methods: {sorted(_METHODS)}.") from None


def list_methods() -> list[str]:
    return sorted(_METHODS)
