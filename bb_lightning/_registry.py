"""Registry of quantization methods, keyed by name and by config type. Imports nothing of the package but `errors`.

A method registers everything it brings in one call, in its package's ``__init__.py``::

    register_method("bayesian_bits", config=BayesianBitsConfig, quantizer=BayesianBitsQuantizer,
                    cost_config=CostConfig, regularizer=BayesianBitsRegularizer)

The shared machinery then builds quantizers as ``quantizer(config, role, num_channels, prune)`` and the regulariser
as ``regularizer(records, modules, cost, input_bits)`` (the `bb_lightning.methods.base.Regularizer` interface).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from .errors import BBConfigError


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its quantizer, its config, its regulariser and the regulariser's config."""

    name: str
    quantizer: type
    config: type
    cost_config: type
    regularizer: type


_METHODS: dict[str, MethodEntry] = {}


def register_method(
    name: str, *, config: type, cost_config: type, regularizer: type, quantizer: type | None = None
) -> Any:
    """Register method ``name``; with ``quantizer=None`` returns a class decorator for the quantizer class.

    Args:
        name: the method's name (``"bayesian_bits"``, ``"bit_pruning"``, ...); also set as ``quantizer.method``.
        config: the method's config dataclass (its type selects the method in `method_for_config`).
        cost_config: the settings class of the method's regulariser (default-constructible).
        regularizer: the regulariser class.
        quantizer: the `bb_lightning.methods.base.QuantizerBase` subclass.

    Registering a name again with other classes warns and replaces the entry.
    """

    def deco(cls: type) -> type:
        entry = MethodEntry(name, cls, config, cost_config, regularizer)
        if name in _METHODS and _METHODS[name] != entry:
            warnings.warn(f"Overwriting quantization method `{name}` in the registry.", stacklevel=3)
        _METHODS[name] = entry
        cls.method = name  # type: ignore[attr-defined]
        return cls

    return deco if quantizer is None else deco(quantizer)


def get_method(name: str) -> MethodEntry:
    """The registry entry for ``name``; raises `BBConfigError` listing the known methods."""
    try:
        return _METHODS[name]
    except KeyError:
        raise BBConfigError(f"Unknown quantization method `{name}`. Registered methods: {sorted(_METHODS)}.") from None


def method_for_config(config: Any) -> MethodEntry:
    """The entry whose config class ``config`` is an instance of; raises `BBConfigError` listing the known ones."""
    for entry in _METHODS.values():
        if type(config) is entry.config:
            return entry
    for entry in _METHODS.values():
        if isinstance(config, entry.config):
            return entry
    known = sorted(e.config.__name__ for e in _METHODS.values())
    raise BBConfigError(
        f"Expected argument `method` to be the config of a registered method (one of {known}), but got "
        f"{type(config).__name__}."
    )


def list_methods() -> list[str]:
    return sorted(_METHODS)


_HOOKS: dict[str, Any] = {}


def register_hook(name: str, fn: Any) -> None:
    """Provide an optional feature to lower layers without them importing it: `bb_lightning.deploy` registers
    ``"onnx_writer"`` (the callbacks' ``export_onnx`` option) and ``"export_command"`` (``bb-lightning export``)."""
    _HOOKS[name] = fn


def get_hook(name: str) -> Any:
    """The function registered as ``name``; `BBConfigError` if nothing provides it."""
    if name not in _HOOKS:
        raise BBConfigError(f"Nothing provides `{name}`: `bb_lightning.deploy` was not imported (import bb_lightning).")
    return _HOOKS[name]
