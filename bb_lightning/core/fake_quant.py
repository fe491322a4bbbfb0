"""Fake quantization on a learned symmetric (signed) or ``[0, u]`` (unsigned) range.

Conventions (Bayesian Bits spec, sections 1.1-1.8):

* ``u = max(|x_max|, 1e-8)`` is the only range parameter (`effective_range`).
  Signed tensors use ``[-u, u]``, unsigned ones ``[0, u]``;
  the range width is ``R = 2u`` or ``R = u``.
* Inputs are clipped to ``[lo', hi']`` with ``hi' = (1 - 1e-7) u`` (keeps the top value off a rounding tie).
* A ``b``-bit level is ``Q_b(x) = s_b * round(x_c / s_b)`` with ``s_b = R / (2^b - 1)``: signed tensors get the
  restricted grid ``-(2^(b-1)-1) .. 2^(b-1)-1``, unsigned ones ``0 .. 2^b - 1``. ``b >= 32`` is float (the clipped
  input itself), because ``s_32`` is below float32 resolution.
* Gradients are straight-through for rounding: ``d out / d x`` is 1 inside the clip range and 0 outside;
  ``d Q_b / d u = (Q_b - x_c) / u + d x_c / d u`` (LSQ-like rounding term plus the PACT clip term).

`nested_quantize` evaluates a convex combination ``sum_l w_l Q_{b_l}(x_c)`` of several levels at once, which
is exactly the Bayesian Bits nested residual sum once ``w`` is written in terms of the cumulative gate products
(see `bb_lightning.methods.bayesian_bits.quantizer`). All maths is float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: Clip shrink factor: ``hi' = CLIP_SHRINK * u``.
CLIP_SHRINK: float = 1.0 - 1e-7
#: Smallest range used in the forward pass (guards ``u = 0`` on dead tensors).
MIN_RANGE: float = 1e-8


def effective_range(x_max: Tensor) -> Tensor:
    """The range actually used, ``u = max(|x_max|, MIN_RANGE)``: a learned range can shrink towards 0 but never
    invert; ``d u / d x_max = sign(x_max)``."""
    return x_max.abs().clamp_min(MIN_RANGE)
#: Bit widths at or above this are treated as float (identity after clipping).
FLOAT_BITS: int = 32


def num_steps(bits: int) -> int:
    """``2^bits - 1``: the number of grid steps across the range ``R``."""
    return (1 << bits) - 1


def scale(x_max: Tensor | float, bits: int, signed: bool) -> Tensor | float:
    """Grid step ``s_b = R / (2^b - 1)`` with ``R = 2 x_max`` (signed) or ``x_max`` (unsigned); tensor or float."""
    width = 2.0 * x_max if signed else x_max
    return width / num_steps(bits)


def codes(x: Tensor, u: Tensor | float, bits: int, signed: bool) -> Tensor:
    """Integer codes ``round(clamp(x / s_b))`` (clip at ``(1 - 1e-7) u``) as a new float tensor, 3 in-place passes."""
    top = float(num_steps(bits)) / (2.0 if signed else 1.0) * CLIP_SHRINK  # hi' / s
    return torch.div(x, scale(u, bits, signed)).clamp_(-top if signed else 0.0, top).round_()


def signed_level(x: Tensor, u: Tensor, bits: Tensor) -> Tensor:
    """``Q_b(x) = s_b * codes(x, u, b, signed=True)`` for a float tensor ``bits`` (0-dim, e.g. the floor of a learned
    bitlength), as a new tensor, without reading ``bits`` on the host: the same float32 operations as `codes` and
    `scale`, so an integer-valued ``bits`` gives their grid bit for bit."""
    steps = torch.exp2(bits) - 1.0
    s = 2.0 * u / steps
    return torch.div(x, s).clamp_(-steps / 2.0 * CLIP_SHRINK, steps / 2.0 * CLIP_SHRINK).round_().mul_(s)


def _bounds(u: Tensor, signed: bool) -> tuple[Tensor, Tensor | float]:
    hi = u * CLIP_SHRINK
    return hi, (-hi if signed else 0.0)


def _level(xc: Tensor, u: Tensor, bits: int, signed: bool) -> Tensor:
    """``Q_b(x_c)``, a new tensor (no autograd)."""
    if bits >= FLOAT_BITS:
        return xc.clone()
    s = scale(u, bits, signed)
    return torch.round(xc / s).mul_(s)


def _reduce_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``t`` over the dims where ``shape`` broadcasts (size 1), returning ``shape``."""
    dims = [d for d, n in enumerate(shape) if n == 1 and t.shape[d] != 1]
    return t.sum(dim=dims, keepdim=True) if dims else t


class _NestedQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_max, weights, channel_gate, levels, signed):  # type: ignore[override]
        u = effective_range(x_max)
        ctx.u_sign = torch.sign(x_max)
        hi, lo = _bounds(u, signed)
        xc = torch.clamp(x, lo, hi) if signed else torch.clamp(x, min=0.0).minimum(hi)
        if len(levels) == 1:
            # single computed level: its convex weight is exactly 1 (weights always sum to 1)
            inner = _level(xc, u, levels[0], signed)
        else:
            inner = _level(xc, u, levels[0], signed).mul_(weights[0])
            for i in range(1, len(levels)):
                inner.addcmul_(_level(xc, u, levels[i], signed), weights[i])
        out = inner * channel_gate if channel_gate is not None else inner
        ctx.levels, ctx.signed = levels, signed
        ctx.save_for_backward(x, u, inner, channel_gate)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, u, inner, channel_gate = ctx.saved_tensors
        levels, signed = ctx.levels, ctx.signed
        need_x, need_u, need_w, need_c = ctx.needs_input_grad[:4]
        g = grad_out * channel_gate if channel_gate is not None else grad_out
        hi, lo = _bounds(u, signed)
        grad_x = grad_u = grad_w = grad_c = None
        above = x > hi
        below = x < lo
        if need_x:  # strict interior, like the reference's ReLU-built clamp: no gradient at a bound itself
            grad_x = g.masked_fill((x >= hi) | (x <= lo), 0.0)
        xc = None
        if need_u or need_w:
            xc = torch.clamp(x, lo, hi) if signed else torch.clamp(x, min=0.0).minimum(hi)
        if need_u:
            rounding = torch.sum((inner - xc) * g) / u
            clip = torch.sum(g * above)
            if signed:
                clip = clip - torch.sum(g * below)
            grad_u = ((rounding + CLIP_SHRINK * clip) * ctx.u_sign).reshape(u.shape)
        if need_w:
            grad_w = torch.stack([torch.sum(_level(xc, u, b, signed).mul_(g)) for b in levels])
        if need_c and channel_gate is not None:
            grad_c = _reduce_to(grad_out * inner, channel_gate.shape)
        return grad_x, grad_u, grad_w, grad_c, None, None


class _SingleLevelQuantize(torch.autograd.Function):
    """One ``b``-bit level (``b < 32``): the common case once every sampled gate is exactly 0 or 1.

    Forward is 4 in-place passes over one fresh tensor. With ``G`` the incoming gradient and ``out = gate * s * k``
    (codes ``k = round(clamp(x/s))``), backward is::

        grad_x    = gate * G * [lo' < x < hi']
        grad_u    = (dot(G, out) - dot(grad_x, x)) / u         (= sum G * gate * (s/u) (k - [inside] x/s))
        grad_gate = rowsum(G * out) / gate                     (= s * rowsum(G k), channels with 0 < gate)

    """

    @staticmethod
    def forward(ctx, x, x_max, channel_gate, bits, signed):  # type: ignore[override]
        u = effective_range(x_max)
        ctx.u_sign = torch.sign(x_max)
        s = scale(u, bits, signed)
        out = codes(x, u, bits, signed).mul_(channel_gate * s if channel_gate is not None else s)
        ctx.signed = signed
        ctx.save_for_backward(x, u, out, channel_gate)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, u, out, gate = ctx.saved_tensors
        need_x, need_u, need_c = ctx.needs_input_grad[:3]
        hi = u * CLIP_SHRINK
        lo = -hi if ctx.signed else torch.zeros_like(hi)
        if x.device.type == "cpu":
            # one fused pass; reading the two bounds is free on CPU
            grad_x = torch.ops.aten.hardtanh_backward(grad_out, x, float(lo), float(hi))
        else:  # no host sync on accelerators
            grad_x = grad_out * ((x > lo) & (x < hi))
        if gate is not None:
            grad_x.mul_(gate)
        grad_u = grad_c = None
        if need_u:
            grad_u = ((torch.dot(grad_out.reshape(-1), out.reshape(-1)) - torch.dot(grad_x.reshape(-1), x.reshape(-1)))
                      / u * ctx.u_sign).reshape(u.shape)
        if need_c and gate is not None:
            n = gate.shape[0]
            rows = (grad_out * out).reshape(n, -1).sum(1)
            g = gate.reshape(n)
            # channels whose gate is exactly 0 get 0 (their hard-concrete sample carries no gradient anyway)
            grad_c = torch.where(g > 0, rows / torch.where(g > 0, g, torch.ones_like(g)), torch.zeros_like(g))
            grad_c = grad_c.reshape(gate.shape)
        return (grad_x if need_x else None), grad_u, grad_c, None, None


def nested_quantize(
    x: Tensor,
    x_max: Tensor,
    weights: Tensor,
    levels: Sequence[int],
    signed: bool,
    channel_gate: Tensor | None = None,
) -> Tensor:
    """``channel_gate * sum_l weights[l] * Q_{levels[l]}(clip(x))`` with straight-through gradients.

    Args:
        x: float32 tensor of any shape.
        x_max: 0-dim range parameter ``u``.
        weights: ``[len(levels)]`` convex weights (non-negative, summing to 1); receives gradients.
        levels: bit widths of the computed levels, ascending.
        signed: symmetric ``[-u, u]`` grid if true, else ``[0, u]``.
        channel_gate: optional per-channel multiplier broadcastable to ``x`` (e.g. ``[C, 1, 1, 1]``).

    Returns:
        Tensor of ``x``'s shape.
    """
    levels = tuple(int(b) for b in levels)
    if len(levels) == 1 and levels[0] < FLOAT_BITS and not weights.requires_grad and x.dim() > 0:
        return _SingleLevelQuantize.apply(x, x_max, channel_gate, levels[0], bool(signed))
    return _NestedQuantize.apply(x, x_max, weights, channel_gate, levels, bool(signed))


def fake_quantize(x: Tensor, x_max: Tensor, bits: int, signed: bool, channel_gate: Tensor | None = None) -> Tensor:
    """Fixed ``bits``-bit fake quantization (clip, round, rescale), STE gradients to ``x`` and ``x_max``.

    >>> fake_quantize(torch.tensor([0.2, 0.9, 2.0]), torch.tensor(1.0), bits=2, signed=False)
    tensor([0.3333, 1.0000, 1.0000])
    """
    return nested_quantize(x, x_max, x_max.new_ones(1), (bits,), signed, channel_gate)
