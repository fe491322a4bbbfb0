"""Each input-quantizer subgraph vs the PyTorch fixed quantizer: 0 mismatches at every width, on random values, on
adversarial values at ``(k + 0.5) * s +- ulp`` (rounding ties) and beyond the range; weights rebuild bit-exactly."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from bb_lightning.deploy.codes import container, input_spec, weight_codes
from bb_lightning.deploy.qdq import GraphBuilder, input_qdq
from bb_lightning.deploy.session import ort_session
from bb_lightning.methods.fixed import FixedMinMaxQuantizer, FixedQuantizer

WIDTHS = [2, 3, 4, 6, 8, 16, 32]


def _adversarial(scale: float, lo: float, qmin: int, qmax: int, n_random: int = 20000) -> np.ndarray:
    """Random values over (and beyond) the range, every tie ``lo + (k + 0.5) s`` and its float32 neighbours."""
    s = np.float32(scale)
    k = np.arange(qmin - 3, qmax + 3, dtype=np.float64)
    ties = (np.float32(lo) + ((k + 0.5) * s).astype(np.float32)).astype(np.float32)
    levels = (np.float32(lo) + (k * s).astype(np.float32)).astype(np.float32)
    near = [np.nextafter(t, np.float32(np.inf)) for t in (ties, levels)] + [
        np.nextafter(t, np.float32(-np.inf)) for t in (ties, levels)
    ]
    span = (qmax - qmin + 1) * float(s)
    rnd = np.random.default_rng(0).uniform(lo - 0.3 * span - 1, lo + 1.3 * span + 1, n_random).astype(np.float32)
    # the ties as computed by division, so x / s lands exactly on k + 0.5 where float32 allows
    out = np.concatenate([ties, levels, *near, rnd, np.float32([0.0, -0.0, 1e30, -1e30])])
    return out.astype(np.float32)


@torch.no_grad()
def _ref(q, x: np.ndarray) -> np.ndarray:
    return q(torch.from_numpy(x)).numpy()


def _run_chain(spec, x: np.ndarray, weight_bits: int | None = None, default_session: bool = False, tmp_path=None):
    b = GraphBuilder("layer")
    out = input_qdq(b, "x", spec, weight_bits)
    b.nodes.append(helper.make_node("Identity", [out], ["y"]))
    graph = helper.make_graph(
        b.nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])], b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "q.onnx"
    onnx.save(model, path)
    sess = ort.InferenceSession(str(path)) if default_session else ort_session(path)
    return sess.run(None, {"x": x})[0], model


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("signed", [True, False])
def test_symmetric_input_subgraph_has_no_mismatch(bits, signed, tmp_path):
    q = FixedQuantizer("input", bits, signed, 1.7)
    spec = input_spec("layer", q)
    scale = spec.scale if bits < 32 else 1.7 / 100
    x = _adversarial(scale, 0.0, spec.qmin if bits < 32 else -100, spec.qmax if bits < 32 else 100)
    ref = _ref(q, x)
    got, model = _run_chain(spec, x, tmp_path=tmp_path)
    mismatches = int((got != ref).sum())
    assert mismatches == 0, f"{mismatches} of {x.size} values differ at {bits} bits, signed={signed}"
    if bits < 32:
        c = container(bits, signed)
        q_types = {n.name: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
        zp = [i for i in model.graph.initializer if i.name == "layer.in_zero_point"][0]
        assert len(q_types) == 1 and zp.data_type == c.onnx_type


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("lo", [0.0, -0.7, 0.25])
def test_minmax_input_subgraph_has_no_mismatch(bits, lo, tmp_path):
    q = FixedMinMaxQuantizer("input", bits, lo, lo + 2.3)
    spec = input_spec("layer", q)
    qmax = (1 << bits) - 1 if bits < 32 else 1000
    x = _adversarial(spec.scale if bits < 32 else 2.3 / 1000, lo, 0, min(qmax, 1 << 17))
    ref = _ref(q, x)
    got, _ = _run_chain(spec, x, tmp_path=tmp_path)
    assert int((got != ref).sum()) == 0


@pytest.mark.parametrize("grid", ["symmetric", "minmax"])
def test_uint8_input_of_an_int2_layer_uses_int8_with_zero_point_and_stays_exact(grid, tmp_path):
    q = FixedQuantizer("input", 8, False, 3.1) if grid == "symmetric" else FixedMinMaxQuantizer("input", 8, 0.0, 3.1)
    spec = input_spec("layer", q)
    x = _adversarial(spec.scale, 0.0, 0, 255)
    got, model = _run_chain(spec, x, weight_bits=2, default_session=True, tmp_path=tmp_path)
    assert int((got != _ref(q, x)).sum()) == 0
    zp = [i for i in model.graph.initializer if i.name == "layer.in_zero_point"][0]
    assert zp.data_type == TensorProto.INT8 and onnx.numpy_helper.to_array(zp) == -128


@pytest.mark.parametrize("bits", [0, 1, 2, 3, 4, 5, 8, 9, 16])
def test_symmetric_weight_codes_rebuild_the_fixed_weight_bit_exactly(bits):
    w = torch.randn(16, 8, 3, 3)
    keep = torch.rand(16) > 0.3 if bits else torch.zeros(16, dtype=torch.bool)
    q = FixedQuantizer("weight", bits, True, float(w.abs().max()) * 0.7, keep)
    codes = weight_codes("conv", q, w)  # asserts codes * s == q(w) bit for bit
    assert torch.equal(codes.dequantize(), q(w).detach())
    c = codes.container()
    assert c.bits == (2 if bits <= 2 else 4 if bits <= 4 else 8 if bits <= 8 else 16) and c.signed
    assert codes.codes.min() >= c.lo and codes.codes.max() <= c.hi
    assert (codes.codes[~keep] == 0).all()


def test_minmax_per_channel_weight_codes_rebuild_bit_exactly():
    w = torch.randn(12, 20)
    bits = torch.tensor([1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 12, 16])
    q = FixedMinMaxQuantizer("weight", bits, w.min(1).values * 0.9, w.max(1).values * 0.8)
    codes = weight_codes("fc", q, w)
    assert torch.equal(codes.dequantize(), q(w).detach())
    assert codes.container().name == "UINT16" and codes.scale.shape == (12,) and codes.lo.shape == (12,)
