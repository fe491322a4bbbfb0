"""The argument validators every config and callback uses: one message format, naming the argument and the value.

Each returns the normalised value or raises `bb_lightning.BBConfigError` ("Expected argument `name` to be ...").

>>> positive("gate_lr", 1e-3)
0.001
>>> int_in("input_bits", 0, 1, 32)
Traceback (most recent call last):
    ...
bb_lightning.errors.BBConfigError: Expected argument `input_bits` to be an int in [1, 32], but got 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from enum import Enum
from typing import Any, TypeVar

from .errors import BBConfigError

E = TypeVar("E", bound=Enum)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def fail(name: str, expected: str, value: object) -> BBConfigError:
    """The error for argument ``name``: ``Expected argument `name` to be <expected>, but got <value>.``"""
    return BBConfigError(f"Expected argument `{name}` to be {expected}, but got {value!r}.")


def positive(name: str, value: object) -> float:
    """A finite float ``> 0``."""
    if not _is_number(value) or not 0 < value < math.inf:  # type: ignore[operator]
        raise fail(name, "a float > 0", value)
    return float(value)  # type: ignore[arg-type]


def non_negative(name: str, value: object) -> float:
    """A finite float ``>= 0``."""
    if not _is_number(value) or not 0 <= value < math.inf:  # type: ignore[operator]
        raise fail(name, "a finite float >= 0", value)
    return float(value)  # type: ignore[arg-type]


def finite(name: str, value: object) -> float:
    """Any finite float."""
    if not _is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
        raise fail(name, "a finite float", value)
    return float(value)  # type: ignore[arg-type]


def number_in(name: str, value: object, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A float in ``[lo, hi]``."""
    if not _is_number(value) or not lo <= value <= hi:  # type: ignore[operator]
        raise fail(name, f"a number in [{lo}, {hi}]", value)
    return float(value)  # type: ignore[arg-type]


def epochs(name: str, value: object) -> float:
    """A (possibly fractional) number of epochs ``>= 0``."""
    if not _is_number(value) or not 0 <= value < math.inf:  # type: ignore[operator]
        raise fail(name, "a number of epochs >= 0", value)
    return float(value)  # type: ignore[arg-type]


def int_at_least(name: str, value: object, lo: int) -> int:
    """An int ``>= lo``."""
    if not _is_int(value) or value < lo:  # type: ignore[operator]
        raise fail(name, f"an int >= {lo}", value)
    return int(value)  # type: ignore[arg-type]


def int_in(name: str, value: object, lo: int, hi: int) -> int:
    """An int in ``[lo, hi]``."""
    if not _is_int(value) or not lo <= value <= hi:  # type: ignore[operator]
        raise fail(name, f"an int in [{lo}, {hi}]", value)
    return int(value)  # type: ignore[arg-type]


def boolean(name: str, value: object) -> bool:
    """``True`` or ``False`` (no truthy stand-ins)."""
    if not isinstance(value, bool):
        raise fail(name, "true or false", value)
    return value


def enum_value(cls: type[E], name: str, value: object) -> E:
    """A member of the string enum ``cls`` from itself or its value; the error lists the valid values."""
    try:
        return cls(value.value if isinstance(value, Enum) else value)
    except ValueError:
        choices = [m.value for m in cls]
        raise fail(name, f"one of {choices}", value) from None


def patterns(name: str, value: object) -> tuple[str, ...]:
    """``None``, one pattern or a list of module-name patterns, as a tuple."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise fail(name, "a list of module-name patterns", value)


def optional_path(name: str, value: object) -> str | os.PathLike | None:
    """``None`` or a file path."""
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise fail(name, "a file path or None", value)
    return value  # type: ignore[return-value]


def optional_str(name: str, value: object) -> str | None:
    """``None`` or a string."""
    if value is not None and not isinstance(value, str):
        raise fail(name, "a str or None", value)
    return value


def sizes(name: str, value: object) -> tuple[int, ...] | None:
    """``None`` or positive per-sample sizes like ``(3, 224, 224)``."""
    if value is None:
        return None
    if not isinstance(value, Sequence) or not all(_is_int(v) and v > 0 for v in value):  # type: ignore[operator]
        raise fail(name, "per-sample sizes like (3, 224, 224)", value)
    return tuple(int(v) for v in value)


def lr_map(name: str, value: Any) -> dict[str, float]:
    """``None`` or a mapping of parameter-group name to learning rate (each ``> 0``)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(name, "a mapping of parameter-group name to learning rate", value)
    return {str(k): positive(f"{name}[{k!r}]", v) for k, v in value.items()}


__all__ = [
    "boolean", "enum_value", "epochs", "fail", "finite", "int_at_least", "int_in", "lr_map", "non_negative",
    "number_in", "optional_path", "optional_str", "patterns", "positive", "sizes",
]
