"""Helpers of the reliability tests: the Lightning test helpers (`tests/helpers.py`)."""

from __future__ import annotations

from helpers import PlainMLP, digits, tiny_module, trainer

__all__ = ["PlainMLP", "digits", "tiny_module", "trainer"]
