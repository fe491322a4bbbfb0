"""Min-max (affine) fake quantization at integer and at fractional bitlengths (BitPruning spec, sections 1.2-1.5).

For a range ``[lo, hi]`` and an integer bitlength ``b >= 1``::

    s_b    = (hi - lo) / (2^b - 1)                    # step; 2^b levels from lo to hi
    Q_b(x) = lo + s_b * round((clip(x, lo, hi) - lo) / s_b)

For a real bitlength ``n`` with ``f = floor(n)`` and ``a = n - f`` the two neighbouring grids are blended::

    Q_n(x) = Q_f(x) + a * (Q_{f+1}(x) - Q_f(x))

so ``Q_n`` is continuous in ``n`` and equals ``Q_k`` at every integer ``k``. The upper grid is ``f + 1``, not
``ceil(n)``, so the bitlength gradient does not vanish at integers. Gradients: straight-through for rounding
(``d out / d x`` = 1 inside ``[lo, hi]``, 0 outside), ``d out / d n = Q_{f+1}(x) - Q_f(x)`` summed over the elements
that share ``n``; ``lo``/``hi`` are statistics and get no gradient. ``n``, ``lo`` and ``hi`` may be 0-dim (per
tensor) or broadcast against ``x`` (e.g. ``[C, 1, 1, 1]`` per output channel). All maths is float32, with no
host-device synchronisation.
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


class _FractionalQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, n: Tensor, lo: Tensor, hi: Tensor) -> Tensor:  # type: ignore[override]
        f = torch.floor(n)
        a = n - f
        span = _span(lo, hi)
        u, inside = _clip(x, lo, span)
        s0, s1 = _step(span, f), _step(span, f + 1.0)
        q0 = torch.div(u, s0).round_().mul_(s0)
        delta = u.div_(s1).round_().mul_(s1).sub_(q0)  # Q_{f+1} - Q_f, in the buffer of u
        ctx.save_for_backward(inside, delta)
        ctx.n_shape = n.shape
        return torch.addcmul(q0.add_(lo), a, delta)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        inside, delta = ctx.saved_tensors
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_n = None
        if ctx.needs_input_grad[1]:
            shape = ctx.n_shape
            if not len(shape) or all(d == 1 for d in shape):
                grad_n = torch.dot(grad.reshape(-1), delta.reshape(-1)).reshape(shape)
            elif shape[0] == grad.shape[0] and all(d == 1 for d in shape[1:]):  # per output channel: batched dots
                c = grad.shape[0]
                grad_n = torch.bmm(grad.reshape(c, 1, -1), delta.reshape(c, -1, 1)).reshape(shape)
            else:
                grad_n = (grad * delta).sum_to_size(shape)
        return grad_x, grad_n, None, None


def minmax_quantize(x: Tensor, lo: Tensor, hi: Tensor, bits: Tensor) -> Tensor:
    """``Q_b(x)`` on ``[lo, hi]`` with integer ``bits`` (float tensor, broadcastable), straight-through gradient.

    >>> x = torch.tensor([-1.0, -0.2, 0.3, 2.0])
    >>> minmax_quantize(x, torch.tensor(-1.0), torch.tensor(1.0), torch.tensor(2.0))
    tensor([-1.0000, -0.3333,  0.3333,  1.0000])
    """
    return _MinMaxQuantize.apply(x, lo.detach(), hi.detach(), bits.detach())


def fractional_quantize(x: Tensor, n: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``Q_n(x)`` for a real bitlength ``n >= 1`` (0-dim or broadcastable to ``x``); differentiable in ``x`` and ``n``.

    >>> x = torch.tensor([-0.2, 0.3])
    >>> lo, hi = torch.tensor(-1.0), torch.tensor(1.0)
    >>> fractional_quantize(x, torch.tensor(2.5), lo, hi)  # halfway between the 2- and 3-bit grids
    tensor([-0.2381,  0.3810])
    """
    return _FractionalQuantize.apply(x, n, lo.detach(), hi.detach())


__all__ = ["MIN_SPAN", "fractional_quantize", "minmax_quantize", "minmax_quantize_reference"]
