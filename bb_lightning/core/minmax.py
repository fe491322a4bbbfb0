"""Min-max (affine) fake quantization at integer bitlengths (BitPruning spec, sections 1.2-1.5), shared by the
BitPruning search and the fixed min-max quantizers of the export; the fractional-bitlength blend is BitPruning's
kernel (`bb_lightning.methods.bit_pruning.kernels`).

For a range ``[lo, hi]`` and an integer bitlength ``b >= 1``::

    s_b    = (hi - lo) / (2^b - 1)                    # step; 2^b levels from lo to hi
    Q_b(x) = lo + s_b * round((clip(x, lo, hi) - lo) / s_b)

Gradients: straight-through for rounding (``d out / d x`` = 1 inside ``[lo, hi]``, 0 outside); ``lo``/``hi`` are
statistics and get no gradient. ``lo``, ``hi`` and ``bits`` may be 0-dim (per tensor) or broadcast against ``x``
(e.g. ``[C, 1, 1, 1]`` per output channel). All maths is float32, with no host-device synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Smallest range width used (guards constant tensors, where ``hi == lo``).
MIN_SPAN: float = 1e-8


def _span(lo: Tensor, hi: Tensor) -> Tensor:
    return (hi - lo).clamp_min(MIN_SPAN)


def _step(span: Tensor, bits: Tensor) -> Tensor:
    """``s_b = span / (2^b - 1)``; ``bits`` a float tensor of integers."""
    return span / (torch.exp2(bits) - 1.0)


def _clip(x: Tensor, lo: Tensor, span: Tensor) -> tuple[Tensor, Tensor]:
    """``(clip(x, lo, lo + span) - lo`` as a new tensor, the boolean mask of elements inside the range)``."""
    xc = torch.clamp(x, lo, lo + span)
    inside = xc == x
    return xc.sub_(lo), inside


def minmax_quantize_reference(x: Tensor, lo: Tensor, hi: Tensor, bits: Tensor) -> Tensor:
    """`minmax_quantize` without the custom gradient (the same arithmetic; for tests and inference)."""
    span = _span(lo, hi)
    u, _ = _clip(x, lo, span)
    step = _step(span, bits)
    return u.div_(step).round_().mul_(step).add_(lo)


class _MinMaxQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lo: Tensor, hi: Tensor, bits: Tensor) -> Tensor:  # type: ignore[override]
        span = _span(lo, hi)
        u, inside = _clip(x, lo, span)
        ctx.save_for_backward(inside)
        step = _step(span, bits)
        return u.div_(step).round_().mul_(step).add_(lo)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def minmax_quantize(x: Tensor, lo: Tensor, hi: Tensor, bits: Tensor) -> Tensor:
    """``Q_b(x)`` on ``[lo, hi]`` with integer ``bits`` (float tensor, broadcastable), straight-through gradient.

    >>> x = torch.tensor([-1.0, -0.2, 0.3, 2.0])
    >>> minmax_quantize(x, torch.tensor(-1.0), torch.tensor(1.0), torch.tensor(2.0))
    tensor([-1.0000, -0.3333,  0.3333,  1.0000])
    """
    return _MinMaxQuantize.apply(x, lo.detach(), hi.detach(), bits.detach())


__all__ = ["MIN_SPAN", "minmax_quantize", "minmax_quantize_reference"]
