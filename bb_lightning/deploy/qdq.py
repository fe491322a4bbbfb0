"""ONNX subgraphs: an integer weight initializer followed by DequantizeLinear, and an input quantizer as
``QuantizeLinear -> (integer Clip) -> DequantizeLinear`` reproducing the fixed PyTorch quantizer exactly.

Exactness: ``QuantizeLinear`` computes ``saturate(round_half_even(x / s) + zp)`` with a true division, like
``torch.round(x / s)``. Where the grid is narrower than its container (signed restricted grids, 3/5/6/7-bit grids)
the codes are clipped with an integer ``Clip`` after the Q for 8-bit containers; onnxruntime has no integer Clip
kernel for 2/4/16-bit types, so there the input is clipped in float to ``[qmin * s, qmax * s]`` before the Q, which
gives the same codes (with ``Min``/``Max``: a float ``Clip`` right before a 2/4/16-bit Q makes onnxruntime's
ClipQuantFusion throw at load time). Min-max grids clip in float to ``[lo, lo + span]``, subtract ``lo`` (if
nonzero), quantize unsigned with zero point 0, dequantize and add ``lo`` back, in the order of
`bb_lightning.core.minmax`.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from .codes import MAX_INT_BITS, Container, InputSpec, container


class GraphBuilder:
    """Collects new nodes and initializers with unique names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[NodeProto] = []
        self.inits: list[TensorProto] = []

    def const(self, suffix: str, value: np.ndarray) -> str:
        name = f"{self.prefix}.{suffix}"
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def f32(self, suffix: str, value: float | np.ndarray) -> str:
        return self.const(suffix, np.asarray(value, dtype=np.float32))

    def node(self, op: str, inputs: list[str], suffix: str, out: str | None = None, **attrs: object) -> str:
        out = out or f"{self.prefix}.{suffix}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{self.prefix}.{suffix}_{op}", **attrs))
        return out


def _typed(c: Container, v: int | np.ndarray) -> np.ndarray:
    return np.asarray(v).astype(c.np_dtype)


def weight_dq(
    b: GraphBuilder, out: str, codes: np.ndarray, scale: np.ndarray, lo: np.ndarray | None, axis: int, c: Container
) -> None:
    """``out = DequantizeLinear(codes, scale, 0; axis) (+ lo)``; ``scale`` / ``lo`` 0-dim or per channel on
    ``axis``."""
    if codes.min() < c.lo or codes.max() > c.hi:
        raise AssertionError(f"{b.prefix}: codes [{codes.min()}, {codes.max()}] do not fit {c.name}")
    q = b.const("weight_codes", _typed(c, codes))
    s = b.f32("weight_scale", scale)
    zp = b.const("weight_zero_point", _typed(c, np.zeros(scale.shape, dtype=np.int64)))
    attrs = {"axis": axis} if scale.ndim else {}
    if lo is None:
        b.node("DequantizeLinear", [q, s, zp], "weight_dq", out=out, **attrs)
        return
    dq = b.node("DequantizeLinear", [q, s, zp], "weight_dq", **attrs)
    shape = [1] * codes.ndim
    if lo.ndim:
        shape[axis] = -1
    b.node("Add", [dq, b.f32("weight_lo", lo.reshape(shape) if lo.ndim else lo)], "weight_add_lo", out=out)


def float_clip(b: GraphBuilder, x: str, lo: float, hi: float, suffix: str, as_clip: bool) -> str:
    """``clamp(x, lo, hi)`` in float32: a ``Clip`` node, or ``Min(Max(x, lo), hi)`` where a Clip would feed a
    2/4/16-bit QuantizeLinear (onnxruntime's ClipQuantFusion throws on those zero-point types at load time)."""
    lo_t, hi_t = b.f32(f"{suffix}_lo", np.float32(lo)), b.f32(f"{suffix}_hi", np.float32(hi))
    if as_clip:
        return b.node("Clip", [x, lo_t, hi_t], suffix)
    return b.node("Min", [b.node("Max", [x, lo_t], f"{suffix}_max"), hi_t], f"{suffix}_min")


def input_qdq(b: GraphBuilder, x: str, spec: InputSpec, weight_bits: int | None) -> str:
    """The input quantizer ``spec`` applied to tensor ``x``; returns the quantized (float) tensor's name.

    ``weight_bits``: the layer's weight container width; a 2-bit weight makes an unsigned 8-bit input use an INT8
    container with zero point -128 (onnxruntime otherwise fuses an invalid int2 QLinearConv and fails to load).
    """
    s = np.float32(spec.scale)
    if spec.grid == "symmetric" and spec.bits >= 32:
        hi = np.float32(spec.clip_hi)
        return b.node("Clip", [x, b.f32("in_clip_lo", -hi if spec.signed else 0.0), b.f32("in_clip_hi", hi)], "in_clip")
    int8_q = spec.bits <= MAX_INT_BITS and 4 < spec.bits <= 8
    if spec.grid == "minmax":
        lo, top = np.float32(spec.lo), np.float32(spec.lo) + np.float32(spec.span)
        x = float_clip(b, x, lo, top, "in_clip", int8_q or spec.bits > MAX_INT_BITS)
        if lo != 0:
            x = b.node("Sub", [x, b.f32("in_lo", lo)], "in_sub_lo")
    if spec.bits > MAX_INT_BITS:  # 17 .. 31 bits: no integer container, the same float ops
        sc = b.f32("in_scale", s)
        y = b.node("Div", [x, sc], "in_div")
        if spec.grid == "symmetric":
            top = np.float32(spec.top)
            y = b.node("Clip", [y, b.f32("in_code_lo", -top if spec.signed else 0.0), b.f32("in_code_hi", top)],
                       "in_code_clip")
        y = b.node("Mul", [b.node("Round", [y], "in_round"), sc], "in_mul")
        return y if spec.grid == "symmetric" or spec.lo == 0 else b.node("Add", [y, b.f32("in_lo_add", spec.lo)],
                                                                          "in_add_lo")
    signed_codes = spec.grid == "symmetric" and spec.signed
    c = container(spec.bits, signed_codes)
    zp = 0
    if weight_bits == 2 and c.bits == 8 and not c.signed:
        c, zp = container(8, True), -128
    qmin, qmax = spec.qmin + zp, spec.qmax + zp
    narrower = spec.grid == "symmetric" and (qmin > c.lo or qmax < c.hi)
    if narrower and c.bits != 8:
        x = float_clip(b, x, np.float32(spec.qmin) * s, np.float32(spec.qmax) * s, "in_clip", False)
    sc, z = b.f32("in_scale", s), b.const("in_zero_point", _typed(c, zp))
    y = b.node("QuantizeLinear", [x, sc, z], "in_q")
    if narrower and c.bits == 8:
        y = b.node("Clip", [y, b.const("in_code_lo", _typed(c, qmin)), b.const("in_code_hi", _typed(c, qmax))],
                   "in_code_clip")
    y = b.node("DequantizeLinear", [y, sc, z], "in_dq")
    if spec.grid == "minmax" and spec.lo != 0:
        y = b.node("Add", [y, b.f32("in_lo_add", spec.lo)], "in_add_lo")
    return y
