"""Independent float64 references of the quantizer maths (spec 1.2-1.4), shared by the maths tests."""

from __future__ import annotations

import torch

SHRINK = 1.0 - 1e-7
CHAIN = (2, 4, 8, 16, 32)


def ref_step(u: float, bits: int, signed: bool) -> float:
    return (2.0 * u if signed else u) / (2.0**bits - 1.0)


def ref_clip(x: torch.Tensor, u: float, signed: bool) -> torch.Tensor:
    hi = u * SHRINK
    return x.double().clamp(-hi if signed else 0.0, hi)


def ref_level(x: torch.Tensor, u: float, bits: int, signed: bool) -> torch.Tensor:
    """Direct ``b``-bit quantization of the clipped input (32 bits = the clipped input, spec 1.8)."""
    xc = ref_clip(x, u, signed)
    if bits >= 32:
        return xc
    s = ref_step(u, bits, signed)
    return s * torch.round(xc / s)


def ref_nested(x, u, signed, gates, bits=CHAIN, channel_gate=None) -> torch.Tensor:
    """Spec 1.4 verbatim: ``z_2 (x_2 + z_4 (e_4 + z_8 (e_8 + ...)))``, residuals of the ungated partial sums.

    ``gates`` / ``channel_gate`` may be floats or (float64, autograd) tensors.
    """
    u = float(u)
    xc = ref_clip(x, u, signed)
    s2 = ref_step(u, bits[0], signed)
    x2 = s2 * torch.round(xc / s2)
    partial, residuals = x2.clone(), []
    for b in bits[1:]:
        s = ref_step(u, b, signed)
        e = s * torch.round((xc - partial) / s)
        residuals.append(e)
        partial = partial + e
    acc = torch.zeros_like(xc)
    for j in reversed(range(len(residuals))):
        acc = gates[j] * (residuals[j] + acc)
    out = x2 + acc
    if channel_gate is not None:
        out = out * channel_gate
    return out


def assert_quant_close(out, ref, u, fine_step, max_frac=0.02):
    """float32 output vs float64 reference: equal up to float32 round-off, except for rare elements where float32
    and float64 round a near-tie of the finest level differently (those may differ by at most one finest step)."""
    diff = (out.detach().double() - ref.detach()).abs()
    tight = 4e-6 * max(u, 1.0)
    assert float(diff.max()) <= fine_step * 1.001 + tight, float(diff.max())
    frac = float((diff > tight).double().mean())
    assert frac <= max_frac, frac


# ----- BitPruning: min-max grids (BitPruning spec 1.2-1.4) -------------------------------------------------------
def ref_minmax(x: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    """``Q_b(x) = lo + s_b round((clip(x) - lo) / s_b)``, ``s_b = (hi - lo) / (2^b - 1)``, in float64."""
    s = (hi - lo) / (2.0**bits - 1.0)
    return lo + s * torch.round((x.double().clamp(lo, hi) - lo) / s)


def ref_fractional(x: torch.Tensor, lo: float, hi: float, n: float) -> torch.Tensor:
    """``Q_n = (1 - a) Q_f + a Q_{f+1}`` with ``f = floor(n)``, ``a = n - f``, in float64."""
    f = int(n // 1)
    a = n - f
    return (1.0 - a) * ref_minmax(x, lo, hi, f) + a * ref_minmax(x, lo, hi, f + 1)
