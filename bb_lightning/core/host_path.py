"""CPU fast path for one Bayesian Bits level with per-channel pruning gates, in a single autograd node.

On CPU, reading a few gate values or the range on the host costs no device sync, so the common training step (every
doubling-gate sample exactly 0 or 1, hence one active level) is done with Python-float scales and in-place passes.
The pruning gates' hard-concrete sample ``z_c`` is taken as an input together with its derivative ``dz_c/dlog_alpha``;
only channels with ``0 < z_c < 1`` get a gradient, since exact 0/1 samples carry none.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import hard_concrete as hc
from .fake_quant import CLIP_SHRINK, MIN_RANGE, num_steps


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
    s = torch.sigmoid((torch.logit(noise, eps=1e-6) + log_alpha) / hc.BETA)
    pre = s * (hc.HIGH - hc.LOW) + hc.LOW
    idx = torch.nonzero((pre > 0.0) & (pre < 1.0)).view(-1)
    ds = s[idx]
    dz = ds * (1.0 - ds) * ((hc.HIGH - hc.LOW) / hc.BETA)
    return pre.clamp_(0.0, 1.0), idx, dz


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum(a * b)`` as one fused pass when both are contiguous (e.g. not for channels-last gradients)."""
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    return torch.sum(a * b)


class HostSingleLevel(torch.autograd.Function):
    """``out = z_c * s * round(clamp(x / s))`` for one ``bits < 32`` level; see the module docstring.

    Inputs: ``x``, ``x_max`` (0-dim), ``prune_log_alpha`` ([C] or None) and, with it, ``z`` ([C] samples), ``idx`` and
    ``dz`` from `channel_gates`. Gradients go to ``x``, ``x_max`` and ``prune_log_alpha`` (same formulas as
    ``fake_quant._SingleLevelQuantize``).
    """

    @staticmethod
    def forward(ctx, x, x_max, prune_log_alpha, z, idx, dz, bits, signed):  # type: ignore[override]
        u = max(float(x_max), MIN_RANGE)
        s = (2.0 * u if signed else u) / num_steps(bits)
        top = float(num_steps(bits)) / (2.0 if signed else 1.0) * CLIP_SHRINK
        out = torch.mul(x, 1.0 / s)
        out.clamp_(-top if signed else 0.0, top).round_()
        gate = None
        if z is not None:
            gate = (z * s).view((-1,) + (1,) * (x.dim() - 1))
            out.mul_(gate)
            gate = z.view(gate.shape)
        else:
            out.mul_(s)
        ctx.u, ctx.hi, ctx.signed = u, u * CLIP_SHRINK, signed
        ctx.save_for_backward(x, out, gate, idx, dz)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, out, gate, idx, dz = ctx.saved_tensors
        hi = ctx.hi
        grad_x = torch.ops.aten.hardtanh_backward(grad_out, x, -hi if ctx.signed else 0.0, hi)
        if gate is not None:
            grad_x.mul_(gate)
        g_u = (_dot(grad_out, out) - _dot(grad_x, x)) / ctx.u
        grad_la = None
        if gate is not None and ctx.needs_input_grad[2]:
            grad_la = gate.new_zeros(gate.shape[0])
            if idx.numel():
                rows = (grad_out[idx] * out[idx]).reshape(idx.numel(), -1).sum(1)
                grad_la[idx] = rows / gate.view(-1)[idx] * dz
        return grad_x, g_u.reshape(()), grad_la, None, None, None, None, None
