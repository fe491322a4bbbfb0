"""BitPruning's kernel: min-max fake quantization at a fractional bitlength (BitPruning spec, sections 1.2-1.5).

For a real bitlength ``n`` with ``f = floor(n)`` and ``a = n - f`` the two neighbouring integer grids of
`bb_lightning.core.minmax` are blended::

    Q_n(x) = Q_f(x) + a * (Q_{f+1}(x) - Q_f(x))

so ``Q_n`` is continuous in ``n`` and equals ``Q_k`` at every integer ``k``. The upper grid is ``f + 1``, not
``ceil(n)``, so the bitlength gradient does not vanish at integers. Gradients: straight-through for rounding,
``d out / d n = Q_{f+1}(x) - Q_f(x)`` summed over the elements that share ``n``; ``lo``/``hi`` are statistics and get
no gradient. ``n``, ``lo`` and ``hi`` may be 0-dim (per tensor) or broadcast against ``x`` (e.g. ``[C, 1, 1, 1]`` per
output channel). All maths is float32, with no host-device synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...core.fake_quant import CLIP_SHRINK, signed_level
from ...core.minmax import _clip, _span, _step


def _sum_to(t: Tensor, shape: torch.Size, weight: Tensor | None = None) -> Tensor:
    """``t`` (times ``weight``, without materialising the product) summed to ``shape``: 0-dim or all-ones (one dot
    product), ``[C, 1, ...]`` per output channel (batched dots), or any other broadcast shape."""
    if not len(shape) or all(d == 1 for d in shape):
        flat = t.reshape(-1)
        return (flat.sum() if weight is None else torch.dot(flat, weight.reshape(-1))).reshape(shape)
    if shape[0] == t.shape[0] and all(d == 1 for d in shape[1:]):
        c = t.shape[0]
        if weight is None:
            return t.reshape(c, -1).sum(1).reshape(shape)
        return torch.bmm(t.reshape(c, 1, -1), weight.reshape(c, -1, 1)).reshape(shape)
    return (t if weight is None else t * weight).sum_to_size(shape)


class _FractionalQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, n: Tensor, lo: Tensor, hi: Tensor) -> Tensor:  # type: ignore[override]
        f = torch.floor(n)
        a = n - f
        span = _span(lo, hi)
        u, inside = _clip(x, lo, span)
        s0, s1 = _step(span, f), _step(span, f + 1.0)
        q0 = torch.div(u, s0).round_().mul_(s0)
        learn_range = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        err = q0 - u if learn_range else None  # Q_f - clip(x) (offsets from lo), before u's buffer is reused
        delta = u.div_(s1).round_().mul_(s1).sub_(q0)  # Q_{f+1} - Q_f, in the buffer of u
        out = torch.addcmul(q0.add_(lo), a, delta)
        ctx.shapes = (n.shape, lo.shape, hi.shape)
        if learn_range:
            # span * d out / d hi: Q_n - clip(x) inside (0 at and below lo), span above the range
            err = torch.where(x > lo + span, span, err.addcmul_(a, delta))
            # NaN/inf iff x has a non-finite element: a clipped inf would otherwise leave every gradient finite and
            # hide the bad tensor from `NonFiniteGuard`; it is folded into the range gradients (0 * finite = 0)
            ctx.save_for_backward(inside, delta, err, span, x.sum())
        else:
            ctx.save_for_backward(inside, delta)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        inside, delta, *rest = ctx.saved_tensors
        n_shape, lo_shape, hi_shape = ctx.shapes
        grad_x = grad * inside if ctx.needs_input_grad[0] or rest else None
        grad_n = _sum_to(grad, n_shape, delta) if ctx.needs_input_grad[1] else None
        grad_lo = grad_hi = None
        if rest:
            err, span, x_sum = rest
            g_hi = _sum_to(grad, span.shape, err) / span + 0.0 * x_sum
            grad_hi = g_hi.reshape(hi_shape) if ctx.needs_input_grad[3] else None
            if ctx.needs_input_grad[2]:  # d out / d lo + d out / d hi = 1 outside the range, 0 inside
                outside = _sum_to(grad, span.shape) - _sum_to(grad_x, span.shape)
                grad_lo = (outside - g_hi).reshape(lo_shape)
            if not ctx.needs_input_grad[0]:
                grad_x = None
        return grad_x, grad_n, grad_lo, grad_hi


class _SymmetricFractionalQuantize(torch.autograd.Function):
    """``Q_n`` on the restricted symmetric grid (per tensor): ``Q_b(x) = s_b * round(clamp(x / s_b, -t_b, t_b))``
    with ``s_b = 2u / (2^b - 1)`` and ``t_b = (2^b - 1) / 2 * CLIP_SHRINK``, i.e. the codes
    ``-(2^(b-1) - 1) .. 2^(b-1) - 1`` of `bb_lightning.core.fake_quant` (0 is a level). Gradients: straight-through
    inside ``(-u', u')`` for ``x``, ``Q_{f+1} - Q_f`` for ``n``, and ``(Q_n - x [inside]) / u`` for ``u``. With
    ``blend=False`` ``n`` is an integer width (evaluation, fixed widths): one level, no gradient to ``n``."""

    @staticmethod
    def forward(ctx, x: Tensor, n: Tensor, u: Tensor, blend: bool) -> Tensor:  # type: ignore[override]
        if blend:
            f = torch.floor(n)
            q0 = signed_level(x, u, f)
            delta = signed_level(x, u, f + 1.0).sub_(q0)
            out = q0.addcmul_(n - f, delta)
        else:
            out, delta = signed_level(x, u, n), None
        need_n, need_u = ctx.needs_input_grad[1:3]
        ctx.save_for_backward(x, u, delta if need_n else None, out if need_u else None)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, u, delta, out = ctx.saved_tensors
        hi = u * CLIP_SHRINK
        grad_x = grad * ((x > -hi) & (x < hi))
        grad_n = None if delta is None else torch.dot(grad.reshape(-1), delta.reshape(-1)).reshape(())
        grad_u = None
        if out is not None:
            grad_u = ((torch.dot(grad.reshape(-1), out.reshape(-1)) - torch.dot(grad_x.reshape(-1), x.reshape(-1)))
                      / u).reshape(u.shape)
        return grad_x if ctx.needs_input_grad[0] else None, grad_n, grad_u, None


def symmetric_fractional_quantize(
    x: Tensor, n: Tensor, u: Tensor, learn_range: bool = False, blend: bool = True
) -> Tensor:
    """``Q_n(x)`` for a real 0-dim bitlength ``n >= 2`` on the symmetric signed grid ``[-u, u]`` (0-dim ``u > 0``) with
    0 as a level; differentiable in ``x`` and ``n``, and in ``u`` with ``learn_range``. At integer ``n = b`` it equals
    ``fake_quantize(x, u, b, signed=True)`` exactly; ``blend=False`` (an integer ``n`` that needs no gradient, e.g. the
    rounded width in evaluation) computes that one grid instead of two.

    >>> symmetric_fractional_quantize(torch.tensor([-0.3, 0.05, 0.4]), torch.tensor(2.0), torch.tensor(0.6))
    tensor([-0.4000,  0.0000,  0.4000])
    """
    return _SymmetricFractionalQuantize.apply(x, n, u if learn_range else u.detach(), blend)


def fractional_quantize(x: Tensor, n: Tensor, lo: Tensor, hi: Tensor, learn_range: bool = False) -> Tensor:
    """``Q_n(x)`` for a real bitlength ``n >= 1`` (0-dim or broadcastable to ``x``); differentiable in ``x`` and ``n``,
    and in ``lo``/``hi`` with ``learn_range`` (pass ``lo.detach()`` to learn ``hi`` only).

    >>> x = torch.tensor([-0.2, 0.3])
    >>> lo, hi = torch.tensor(-1.0), torch.tensor(1.0)
    >>> fractional_quantize(x, torch.tensor(2.5), lo, hi)  # halfway between the 2- and 3-bit grids
    tensor([-0.2381,  0.3810])
    """
    if not learn_range:
        lo, hi = lo.detach(), hi.detach()
    return _FractionalQuantize.apply(x, n, lo, hi)


__all__ = ["fractional_quantize", "symmetric_fractional_quantize"]
