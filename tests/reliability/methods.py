"""The quantization methods every reliability test runs with: ONE place to add a method.

Each entry maps a method name to a factory ``(**overrides) -> QuantizationSearch``. A factory must accept
``strength``, ``gate_lr``, ``export_path``, ``overwrite_export``, ``finetune_epochs`` and ``low_gates`` (bool: start
some gates switched off, so that skipped levels are exercised) and build a callback that fits `tiny_module` on the
digits (1x16x16 inputs). To add BitPruning, add one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bb_lightning import BayesianBits, BitPruning
from bb_lightning.plugin.search import QuantizationSearch


def _bayesian_bits(low_gates: bool = False, **kw: Any) -> QuantizationSearch:
    kw.setdefault("strength", 0.1)
    kw.setdefault("gate_lr", 1e-2)
    if low_gates:
        # 4-bit gate on, 8-bit gate cut off (so are 16 and 32): every layer computes one level on the CPU path
        kw.setdefault("gate_init", (6.0, -6.0, 6.0, 6.0))
    else:
        # gates near the decision region, so samples in (0, 1) and multi-level steps happen within a few steps
        kw.setdefault("gate_init", 0.5)
    return BayesianBits(**kw)


def _bit_pruning(low_gates: bool = False, gate_lr: float = 0.05, **kw: Any) -> QuantizationSearch:
    kw.setdefault("strength", 0.1)
    if low_gates:
        # every site at the 2-bit floor: the integer grid is exact (a = 0) and the bound projection is exercised
        kw.setdefault("init_bits", 2.0)
    else:
        # fractional per-channel bitlengths: both neighbouring grids of every site contribute from the first step
        kw.setdefault("init_bits", 5.5)
        kw.setdefault("weight_granularity", "channel")
    return BitPruning(bit_lr=gate_lr, **kw)


def _bit_pruning_learned_ranges(low_gates: bool = False, gate_lr: float = 0.05, **kw: Any) -> QuantizationSearch:
    """BitPruning with ``learn_ranges=True``: ranges are parameters in a ``"ranges"`` group (state, resume, DDP)."""
    kw.setdefault("learn_ranges", True)
    return _bit_pruning(low_gates, gate_lr, **kw)


METHODS: dict[str, Callable[..., QuantizationSearch]] = {
    "bayesian_bits": _bayesian_bits,
    "bit_pruning": _bit_pruning,
    "bit_pruning_learned_ranges": _bit_pruning_learned_ranges,
}
