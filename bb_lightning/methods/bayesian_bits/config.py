"""Method-specific settings of Bayesian Bits, validated on construction."""

from __future__ import annotations

import math

from collections.abc import Sequence
from dataclasses import dataclass, field

from .hard_concrete import EVAL_THRESHOLD
from ..._validate import boolean, fail, finite


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class BayesianBitsConfig:
    """Settings of one Bayesian Bits quantizer.

    Args:
        bits: the doubling chain, starting at 2 (e.g. ``(2, 4, 8, 16, 32)``; 32 means float).
        gate_init: initial ``log_alpha`` of the doubling gates ``z_4 .. z_top``: one float for all, or one per gate.
            ``None`` (default) gives ``6`` for every gate except a float (32-bit) one, which starts at ``-6``, i.e.
            cut off for good: the search starts at w16a16 like the reference's ImageNet runs. ``6`` gives
            ``P(z > 0) = 0.9995``.
        prune: per-output-channel 0-bit gates ``z_2`` on weights.
        prune_init: initial ``log_alpha`` of the pruning gates.
        gate_cutoff: a doubling gate with ``log_alpha <= gate_cutoff`` is forced to 0, with every higher gate
            (reference: -2; its computation is skipped).
        eval_threshold: at evaluation a gate is on iff ``P(z = 0) < eval_threshold`` (reference: 0.34).
    """

    bits: Sequence[int] = (2, 4, 8, 16, 32)
    gate_init: float | Sequence[float] | None = None
    prune: bool = True
    prune_init: float = 6.0
    gate_cutoff: float = -2.0
    eval_threshold: float = EVAL_THRESHOLD
    _gate_init: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.bits, (str, bytes)) or not isinstance(self.bits, Sequence) or not all(
            isinstance(b, int) and not isinstance(b, bool) for b in self.bits
        ):
            raise fail("bits", "a sequence of ints like (2, 4, 8, 16, 32)", self.bits)
        bits = tuple(int(b) for b in self.bits)
        if len(bits) < 2 or bits[0] != 2 or any(b2 != 2 * b1 for b1, b2 in zip(bits, bits[1:])) or bits[-1] > 32:
            raise fail("bits", "a doubling chain starting at 2 and ending at most at 32 (e.g. (2, 4, 8, 16, 32) or "
                       "(2, 4, 8))", tuple(self.bits))
        self.bits = bits
        n = len(bits) - 1
        if self.gate_init is None:
            # start at the highest non-float width: the float (32-bit) gate is cut off from the start
            init = tuple(-6.0 if b >= 32 else 6.0 for b in bits[1:])
        elif _is_number(self.gate_init):
            init = (float(self.gate_init),) * n
        else:
            if (
                not isinstance(self.gate_init, Sequence)
                or isinstance(self.gate_init, (str, bytes))
                or not all(_is_number(v) for v in self.gate_init)
            ):
                raise fail("gate_init", f"one float or {n} floats", self.gate_init)
            init = tuple(float(v) for v in self.gate_init)
            if len(init) != n:
                raise fail("gate_init", f"one float or {n} floats (one per doubling gate {list(bits[1:])})",
                           tuple(self.gate_init))
        if not all(math.isfinite(v) for v in init):
            raise fail("gate_init", "finite", self.gate_init)
        self._gate_init = init
        if not _is_number(self.eval_threshold) or not 0.0 < self.eval_threshold < 1.0:
            raise fail("eval_threshold", "in (0, 1)", self.eval_threshold)
        self.prune = boolean("prune", self.prune)
        self.prune_init = finite("prune_init", self.prune_init)
        self.gate_cutoff = finite("gate_cutoff", self.gate_cutoff)

    @property
    def gate_inits(self) -> tuple[float, ...]:
        """One initial ``log_alpha`` per doubling gate."""
        return self._gate_init
