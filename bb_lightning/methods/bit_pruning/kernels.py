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

from ...core.minmax import _clip, _span, _step


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


def fractional_quantize(x: Tensor, n: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``Q_n(x)`` for a real bitlength ``n >= 1`` (0-dim or broadcastable to ``x``); differentiable in ``x`` and ``n``.

    >>> x = torch.tensor([-0.2, 0.3])
    >>> lo, hi = torch.tensor(-1.0), torch.tensor(1.0)
    >>> fractional_quantize(x, torch.tensor(2.5), lo, hi)  # halfway between the 2- and 3-bit grids
    tensor([-0.2381,  0.3810])
    """
    return _FractionalQuantize.apply(x, n, lo.detach(), hi.detach())


__all__ = ["fractional_quantize"]
