"""CPU fast path of the Bayesian Bits quantizer (any number of active levels, pruning gates) in one autograd node.

On CPU, reading a few gate values or the range on the host costs no device sync, so the training step is done with
Python-float scales and in-place passes; the common case (every doubling-gate sample exactly 0 or 1) has one level.
The pruning gates' hard-concrete sample ``z_c`` is taken as an input together with its derivative ``dz_c/dlog_alpha``;
only channels with ``0 < z_c < 1`` get a gradient, since exact 0/1 samples carry none.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...core.fake_quant import CLIP_SHRINK, FLOAT_BITS, MIN_RANGE, codes, scale
from . import hard_concrete as hc


def host_sample(log_alpha: list[float], noise: list[float]) -> list[float]:
    """Hard-concrete samples in Python floats (same formula as `hard_concrete.sample`)."""
    out = []
    for la, u in zip(log_alpha, noise):
        u = min(max(u, 1e-6), 1.0 - 1e-6)
        s = 1.0 / (1.0 + math.exp(-(math.log(u) - math.log1p(-u) + la) / hc.BETA))
        out.append(min(max(s * (hc.HIGH - hc.LOW) + hc.LOW, 0.0), 1.0))
    return out


@torch.no_grad()
def channel_gates(log_alpha: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(z [C], fractional channel indices, dz/dlog_alpha at those indices)`` without building a graph."""
    s = torch.logit(noise, eps=1e-6).add_(log_alpha).mul_(1.0 / hc.BETA).sigmoid_()
    z = s.mul(hc.HIGH - hc.LOW).add_(hc.LOW)
    idx = torch.nonzero(z.sub(0.5).abs_() < 0.5).view(-1)  # 0 < z < 1
    ds = s[idx]
    dz = ds.mul_(1.0 - ds).mul_((hc.HIGH - hc.LOW) / hc.BETA)
    return z.clamp_(0.0, 1.0), idx, dz


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum(a * b)`` as one fused pass when both are contiguous (e.g. not for channels-last gradients)."""
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    return torch.sum(a * b)


class HostNested(torch.autograd.Function):
    """``out = z_c * sum_l w_l * s_l * round(clamp(x) / s_l)`` over the active levels (all ``< 32`` bits or float).

    Inputs: ``x``; ``x_max`` (0-dim); ``w`` (``[L]`` level weights with a graph to the gates, or ``None`` when a single
    level has weight exactly 1); ``w_host`` (their values as floats); ``prune_log_alpha`` ([C] or None) with ``z``,
    ``idx``, ``dz`` from `channel_gates`; ``bits`` per level; ``signed``. Because the weights sum to 1, the range
    gradient has the same closed form for any number of levels::

        grad_x = z_c * G * [lo' < x < hi']
        grad_u = (dot(G, out) - dot(grad_x, x)) / u
        grad_w_l = dot(z_c * G, Q_l(x))                         (levels recomputed in backward)
        grad_log_alpha_c = rowsum(G * out)_c / z_c * dz_c        (only channels with 0 < z_c < 1)
    """

    @staticmethod
    def forward(ctx, x, x_max, w, w_host, prune_log_alpha, z, idx, dz, bits, signed):  # type: ignore[override]
        raw = float(x_max)
        u = max(abs(raw), MIN_RANGE)  # fake_quant.effective_range
        hi = u * CLIP_SHRINK
        if len(bits) == 1 and bits[0] < FLOAT_BITS:
            out = codes(x, u, bits[0], signed).mul_(scale(u, bits[0], signed))
        else:
            xc = torch.clamp(x, -hi if signed else 0.0, hi)
            out = None
            for b, wl in zip(bits, w_host):
                if wl == 0.0:
                    continue  # kept only for a fractional gate's gradient
                term = xc if b >= FLOAT_BITS else codes(xc, u, b, signed).mul_(scale(u, b, signed))
                out = term * wl if out is None else out.add_(term, alpha=wl)
        gate = None
        if z is not None:
            gate = z.view((-1,) + (1,) * (x.dim() - 1))
            out.mul_(gate)
        ctx.u, ctx.hi, ctx.signed, ctx.bits, ctx.u_sign = u, hi, signed, bits, (1.0 if raw >= 0 else -1.0)
        ctx.save_for_backward(x, out, gate, idx, dz)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, out, gate, idx, dz = ctx.saved_tensors
        u, hi, signed = ctx.u, ctx.hi, ctx.signed
        grad_x = torch.ops.aten.hardtanh_backward(grad_out, x, -hi if signed else 0.0, hi)
        if gate is not None:
            grad_x.mul_(gate)
        g_u = (_dot(grad_out, out) - _dot(grad_x, x)) / u
        grad_w = None
        if ctx.needs_input_grad[2]:
            g = grad_out if gate is None else grad_out * gate
            xc = torch.clamp(x, -hi if signed else 0.0, hi)
            parts = []
            for b in ctx.bits:
                level = xc if b >= FLOAT_BITS else codes(xc, u, b, signed).mul_(scale(u, b, signed))
                parts.append(_dot(g, level))
            grad_w = torch.stack(parts)
        grad_la = None
        if gate is not None and ctx.needs_input_grad[4]:
            grad_la = gate.new_zeros(gate.shape[0])
            if idx.numel():
                rows = (grad_out[idx] * out[idx]).reshape(idx.numel(), -1).sum(1)
                grad_la[idx] = rows / gate.view(-1)[idx] * dz
        return grad_x, (g_u * ctx.u_sign).reshape(()), grad_w, None, grad_la, None, None, None, None, None
