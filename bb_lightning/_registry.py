"""Registry of quantization methods: ``@register_method(name, config=...)`` on a quantizer class."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from .errors import BBConfigError


@dataclass(frozen=True)
class MethodEntry:
    name: str
    quantizer: type
    config: type


_METHODS: dict[str, MethodEntry] = {}


def register_method(name: str, config: type) -> Any:
    """Class decorator registering a `bb_lightning.methods.base.QuantizerBase` subclass under ``name``."""

    def deco(cls: type) -> type:
        if name in _METHODS and _METHODS[name].quantizer is not cls:
            warnings.warn(f"Overwriting quantization method `{name}` in the registry.", stacklevel=2)
        _METHODS[name] = MethodEntry(name, cls, config)
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
