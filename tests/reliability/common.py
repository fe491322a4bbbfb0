"""Helpers of the reliability tests: the Lightning test helpers (`tests/lightning/helpers.py`) plus a few more."""

from __future__ import annotations

import sys
from pathlib import Path

_LIGHTNING_TESTS = str(Path(__file__).resolve().parents[1] / "lightning")
if _LIGHTNING_TESTS not in sys.path:
    sys.path.insert(0, _LIGHTNING_TESTS)

from helpers import PlainMLP, digits, tiny_module, trainer  # noqa: E402

__all__ = ["PlainMLP", "digits", "tiny_module", "trainer"]
