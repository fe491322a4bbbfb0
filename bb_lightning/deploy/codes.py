"""Integer codes and scales of the fixed quantizers, computed with the project's own quantizer maths.

A weight quantized on the symmetric grid is ``W_q = codes * s`` (codes in ``[-(2^(b-1)-1), 2^(b-1)-1]`` signed or
``[0, 2^b-1]`` unsigned, ``s`` 0-dim); on the min-max grid it is ``W_q = codes * s + lo`` (codes in ``[0, 2^b-1]``,
``s``, ``lo`` 0-dim or per output channel ``[C]``). `weight_codes` asserts that these rebuild the fixed model's
quantized weight bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._api import (
    CLIP_SHRINK,
    FLOAT_BITS,
    MIN_SPAN,
    BBConfigError,
    FixedMinMaxQuantizer,
    FixedQuantizer,
    effective_range,
    num_steps,
    symmetric_scale,
)

#: Widest integer container; wider grids (17 .. 31 bits) are emulated with float ops, 32 bits stay float.
MAX_INT_BITS = 16


@dataclass(frozen=True)
class Container:
    """An ONNX integer tensor type: ``onnx_type``, the numpy dtype that packs it, its value range."""

    onnx_type: int
    np_dtype: type
    bits: int
    signed: bool

    @property
    def lo(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def name(self) -> str:
        return f"{'' if self.signed else 'U'}INT{self.bits}"


def _types() -> dict[tuple[int, bool], tuple[int, type]]:
    """``{(width, signed): (ONNX type, numpy dtype)}`` (imported on first use: onnx is an optional dependency)."""
    import ml_dtypes
    from onnx import TensorProto

    return {
        (2, True): (TensorProto.INT2, ml_dtypes.int2),
        (2, False): (TensorProto.UINT2, ml_dtypes.uint2),
        (4, True): (TensorProto.INT4, ml_dtypes.int4),
        (4, False): (TensorProto.UINT4, ml_dtypes.uint4),
        (8, True): (TensorProto.INT8, np.int8),
        (8, False): (TensorProto.UINT8, np.uint8),
        (16, True): (TensorProto.INT16, np.int16),
        (16, False): (TensorProto.UINT16, np.uint16),
    }


def container(bits: int, signed: bool) -> Container:
    """The narrowest ONNX container for ``bits``-bit codes: 1-2 -> (U)INT2, 3-4 -> (U)INT4, 5-8 -> (U)INT8,
    9-16 -> (U)INT16 (unsigned for unsigned codes)."""
    if not 1 <= bits <= MAX_INT_BITS:
        raise ValueError(f"No integer container for {bits}-bit codes (1 .. {MAX_INT_BITS}).")
    width = next(w for w in (2, 4, 8, 16) if bits <= w)
    onnx_type, np_dtype = _types()[(width, signed)]
    return Container(onnx_type, np_dtype, width, signed)


@dataclass
class WeightCodes:
    """A quantized weight as integers. ``codes`` is ``None`` for float weights (``>= 32`` bits, kept in ``dense``).

    Attributes:
        codes: int64 tensor of the weight's shape, or ``None``.
        scale: float32 0-dim or ``[C]`` step.
        lo: float32 0-dim or ``[C]`` offset (min-max grids with a nonzero lower end), else ``None``.
        bits: widest per-channel bit width (0 = every channel pruned).
        signed: whether the codes are signed.
        dense: the fixed model's quantized weight (float32, the reference the codes rebuild).
    """

    codes: Tensor | None
    scale: Tensor | None
    lo: Tensor | None
    bits: int
    signed: bool
    dense: Tensor

    def container(self) -> Container | None:
        return None if self.codes is None else container(max(self.bits, 1), self.signed)

    def dequantize(self) -> Tensor:
        """``codes * scale (+ lo)`` broadcast per output channel, in float32 (one multiply, one add: as ONNX DQ)."""
        assert self.codes is not None and self.scale is not None
        view = (-1,) + (1,) * (self.codes.dim() - 1)
        w = self.codes.float() * (self.scale.view(view) if self.scale.dim() else self.scale)
        if self.lo is not None:
            w = w + (self.lo.view(view) if self.lo.dim() else self.lo)
        return w


def _minmax_step(lo: Tensor, hi: Tensor, bits: Tensor) -> tuple[Tensor, Tensor]:
    """``(span, step)`` exactly as `bb_lightning.core.minmax` computes them."""
    span = (hi - lo).clamp_min(MIN_SPAN)
    return span, span / (torch.exp2(bits) - 1.0)


@torch.no_grad()
def weight_codes(name: str, quantizer: torch.nn.Module, weight: Tensor) -> WeightCodes:
    """Codes of ``weight`` (the layer's effective float weight) under the fixed ``quantizer``; asserts they rebuild the
    quantizer's output bit for bit."""
    weight = weight.detach().float()
    dense = quantizer(weight).detach()
    if isinstance(quantizer, FixedQuantizer):
        bits, signed = quantizer.bits, quantizer._signed
        if bits >= FLOAT_BITS or bits > MAX_INT_BITS:
            return WeightCodes(None, None, None, bits, signed, dense)
        b = bits if bits > 0 else 2
        u = effective_range(quantizer.x_max.detach())
        s = symmetric_scale(u, b, signed)
        top = float(num_steps(b)) / (2.0 if signed else 1.0) * CLIP_SHRINK
        codes = torch.div(weight, s).clamp_(-top if signed else 0.0, top).round_()
        if quantizer.keep is not None:
            codes[~quantizer.keep] = 0.0
        out = WeightCodes(codes.long(), s.reshape(()).float(), None, bits, signed, dense)
    elif isinstance(quantizer, FixedMinMaxQuantizer):
        bits_t, lo, hi = quantizer.bits, quantizer.lo, quantizer.hi
        bits = int(bits_t.max())
        if bits > MAX_INT_BITS:
            return WeightCodes(None, None, None, bits, True, dense)
        view = (-1,) + (1,) * (weight.dim() - 1)
        lo_v, hi_v, b_v = ((t.view(view) if t.dim() else t) for t in (lo, hi, bits_t))
        span, step = _minmax_step(lo_v, hi_v, b_v)
        codes = (torch.clamp(weight, lo_v, lo_v + span) - lo_v).div_(step).round_()
        scale = step.reshape(-1) if step.dim() else step
        out = WeightCodes(codes.long(), scale.float(), lo.clone().float(), bits, False, dense)
        if not bool((out.lo != 0).any()):
            out.lo = None
    else:
        raise BBConfigError(
            f"Layer `{name}`: cannot export a `{type(quantizer).__name__}` weight quantizer; build the model with "
            "`bb_lightning.apply_config(model, config)` (fixed quantizers) first."
        )
    rebuilt = out.dequantize()
    if not torch.equal(rebuilt, dense):
        bad = int((rebuilt != dense).sum())
        raise AssertionError(f"Layer `{name}`: integer codes rebuild the quantized weight with {bad} differing values.")
    return out


@dataclass
class InputSpec:
    """A fixed input quantizer, as the ONNX subgraph needs it (all floats are float32 values).

    ``grid``: ``"symmetric"`` or ``"minmax"``. Symmetric: ``y = s * round(clamp(x / s, -top, top))`` (signed) or
    ``clamp(x / s, 0, top)``; ``bits >= 32``: ``clamp(x, -hi, hi)`` / ``clamp(x, 0, hi)``. Min-max:
    ``y = lo + s * round((clamp(x, lo, lo + span) - lo) / s)``.
    """

    grid: str
    bits: int
    signed: bool
    scale: float
    lo: float = 0.0
    span: float = 0.0
    clip_hi: float = 0.0

    @property
    def qmin(self) -> int:
        return -((1 << (self.bits - 1)) - 1) if self.grid == "symmetric" and self.signed else 0

    @property
    def qmax(self) -> int:
        if self.grid == "symmetric" and self.signed:
            return (1 << (self.bits - 1)) - 1
        return (1 << self.bits) - 1

    @property
    def top(self) -> float:
        """The symmetric grid's code clamp ``(2^b - 1) / (2 or 1) * (1 - 1e-7)`` as float32."""
        return float(np.float32(float(num_steps(self.bits)) / (2.0 if self.signed else 1.0) * CLIP_SHRINK))


@torch.no_grad()
def input_spec(name: str, quantizer: torch.nn.Module) -> InputSpec:
    """The `InputSpec` of a fixed input quantizer (per tensor)."""
    if isinstance(quantizer, FixedQuantizer):
        u = effective_range(quantizer.x_max.detach())
        bits = quantizer.bits
        if bits >= FLOAT_BITS:
            return InputSpec("symmetric", bits, quantizer._signed, 0.0, clip_hi=float(u * CLIP_SHRINK))
        s = symmetric_scale(u, bits, quantizer._signed)
        return InputSpec("symmetric", bits, quantizer._signed, float(s))
    if isinstance(quantizer, FixedMinMaxQuantizer) and quantizer.lo.dim() == 0:
        span, step = _minmax_step(quantizer.lo, quantizer.hi, quantizer.bits)
        return InputSpec("minmax", int(quantizer.bits), False, float(step), float(quantizer.lo), float(span))
    raise BBConfigError(
        f"Layer `{name}`: cannot export a `{type(quantizer).__name__}` input quantizer (expected a per-tensor fixed "
        "quantizer from `bb_lightning.apply_config`)."
    )
