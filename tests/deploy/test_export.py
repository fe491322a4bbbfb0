"""`export_onnx` on small models: containers per width, bit-exact codes, one layer within rtol 1e-5 in onnxruntime,
default onnxruntime options load the file, bad input."""

from __future__ import annotations

import os

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from deploy_configs import make_config
from onnx import numpy_helper
from torch import nn

from bb_lightning import BBConfigError, UnsupportedLayerError, apply_config
from bb_lightning.deploy import export_onnx, ort_session
from bb_lightning.deploy.session import optimized_op_counts

CONTAINER = {b: "INT2" if b <= 2 else "INT4" if b <= 4 else "INT8" if b <= 8 else "INT16" for b in range(17)}


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),  # depthwise
        nn.Conv2d(8, 16, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5),
    ).eval()


def inits(path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    types = {i.name: i.data_type for i in model.graph.initializer}
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}, types


@torch.no_grad()
def fixed_weights(model, cfg) -> dict[str, torch.Tensor]:
    fixed = apply_config(copy.deepcopy(model), cfg).eval()
    return {n: m.quantized_weight() for n, m in fixed.named_modules() if hasattr(m, "weight_quantizer")}


@pytest.mark.parametrize("grid", ["symmetric", "minmax"])
def test_every_weight_is_integer_in_its_container_and_rebuilds_the_fixed_weight(grid, tmp_path):
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    wb = (0, 2, 3, 5, 9) if grid == "symmetric" else (1, 3, 6, 16, 12)
    cfg = make_config(model, x, weight_bits=wb, input_bits=(8, 3, 16, 6, 32), grid=grid, per_channel=True)
    if grid == "symmetric":  # 0 bits = every channel pruned
        cfg.layers["0"]["kept_channels"] = []
    res = export_onnx(model, cfg, tmp_path / "m.onnx", x, remove_pruned=False)
    values, types = inits(res.path)
    expected = fixed_weights(model, cfg)
    for name, layer in cfg.layers.items():
        w = layer["weight"]
        codes = values[f"{name}.weight_codes"]
        bits = w["bits"]
        want = CONTAINER[bits] if grid == "symmetric" else "U" + CONTAINER[bits]
        assert res.layers[name]["weight"] == want, name
        assert types[f"{name}.weight_codes"] == getattr(onnx.TensorProto, want)
        scale = values[f"{name}.weight_scale"]
        lo = values.get(f"{name}.weight_lo")
        transposed = res.layers[name]["op"] == "MatMul"
        c = codes.astype(np.float32)
        if transposed:
            c = c.T
        view = (-1,) + (1,) * (c.ndim - 1)
        w_dq = c * (scale.reshape(view) if scale.ndim else scale)
        if lo is not None:
            w_dq = w_dq + (lo.T.reshape(view) if transposed else lo.reshape(view))
        assert np.array_equal(w_dq, expected[name].numpy()), f"{name}: dequantized codes != fixed weight"
        if np.ndim(scale):
            dq = [n for n in onnx.load(str(res.path)).graph.node if n.name == f"{name}.weight_dq_DequantizeLinear"][0]
            assert dq.attribute[0].name == "axis"


class Parallel(nn.Module):
    """Five copies of one layer on the same input (one export covers five width pairs)."""

    def __init__(self, make) -> None:
        super().__init__()
        self.branches = nn.ModuleList(make() for _ in range(5))

    def forward(self, x):
        return torch.stack([b(x) for b in self.branches])


@pytest.mark.parametrize("kind", ["conv", "depthwise", "linear"])
@pytest.mark.parametrize("grid", ["symmetric", "minmax"])
def test_one_layer_in_onnxruntime_matches_pytorch_within_rtol(kind, grid, tmp_path):
    make = {"conv": lambda: nn.Conv2d(8, 16, 3, padding=1),
            "depthwise": lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8),
            "linear": lambda: nn.Linear(32, 16)}[kind]
    model = Parallel(make).eval()
    x = torch.randn(4, 8, 6, 6) if kind != "linear" else torch.randn(4, 32)
    cfg = make_config(model, x, weight_bits=(2, 4, 8, 16, 32), input_bits=(8, 4, 8, 16, 6), grid=grid, per_channel=True)
    res = export_onnx(model, cfg, tmp_path / "m.onnx", x)
    with torch.no_grad():
        fixed = apply_config(copy.deepcopy(model), cfg).eval()(x).numpy()
        deploy = res.model(x).numpy()
    got = ort_session(tmp_path / "m.onnx").run(None, {"input": x.numpy()})[0]
    for i, (wb, ib) in enumerate([(2, 8), (4, 4), (8, 8), (16, 16), (32, 6)]):
        # vs the PyTorch deploy model: the same integer weights (and, at w8a8, the int32 bias QLinearConv needs)
        np.testing.assert_allclose(got[i], deploy[i], rtol=1e-5, atol=1e-5 * float(np.abs(deploy[i]).max()),
                                   err_msg=f"{kind} w{wb}a{ib}")
        # vs the fixed fake-quant model: identical except the w8a8 conv's bias, rounded to half a product step
        b_scale = getattr(res.model.branches[i], "b_scale", None)
        spec = res.model.branches[i].input_spec
        fusable = (wb, ib) == (8, 8) and kind != "linear" and (spec.grid == "symmetric" or spec.lo == 0)
        assert (b_scale is not None) == fusable
        half_step = 0.0 if b_scale is None else 0.5 * float(b_scale.max())
        np.testing.assert_allclose(deploy[i], fixed[i], rtol=1e-5, atol=1e-6 + half_step * 1.001,
                                   err_msg=f"{kind} w{wb}a{ib} deploy vs fixed")


def test_default_onnxruntime_session_loads_int2_weights_after_uint8_inputs(tmp_path):
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    cfg = make_config(model, x, weight_bits=(2, 32), input_bits=(8,))
    res = export_onnx(model, cfg, tmp_path / "m.onnx", x)
    assert "INT8(zp=-128)" in {v["input"] for v in res.layers.values()}
    default = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])  # must not fail to load
    out = default.run(None, {"input": x.numpy()})[0]
    faithful = ort_session(res.path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = apply_config(copy.deepcopy(model), cfg).eval()(x).numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(faithful, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_config_that_does_not_match_the_model_names_the_layer(tmp_path):
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    cfg = make_config(model, x)
    cfg.layers["4"]["weight_shape"] = [99, 8, 1, 1]
    with pytest.raises(BBConfigError, match="`4`: weight shape"):
        export_onnx(model, cfg, tmp_path / "m.onnx", x)
    assert list(tmp_path.iterdir()) == []


class OddConv(nn.Conv2d):
    def forward(self, x):  # a custom forward the quantizer cannot know about
        return super().forward(x) * 2


def test_unsupported_layer_is_named_with_a_hint(tmp_path):
    model = nn.Sequential(OddConv(3, 4, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    cfg = make_config(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), x)
    with pytest.raises(UnsupportedLayerError, match=r"Layer `0`.*register_layer_adapter"):
        export_onnx(model, cfg, tmp_path / "m.onnx", x)


def test_existing_file_is_never_overwritten_unless_asked_and_no_partial_file_is_left(tmp_path, monkeypatch):
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    cfg = make_config(model, x)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(model, cfg, path, x)
    assert path.read_bytes() == b"keep me"
    export_onnx(model, cfg, path, x, overwrite=True)
    onnx.checker.check_model(str(path), full_check=True)

    def broken_fsync(fd):  # the bytes are in the temporary file, the disk then fails
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        export_onnx(model, cfg, tmp_path / "new.onnx", x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_w8a8_conv_relu_chain_runs_on_int8_kernels(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()
    x = torch.randn(2, 8, 12, 12)
    cfg = make_config(model, x, weight_bits=(8,), input_bits=(8,))
    res = export_onnx(model, cfg, tmp_path / "m.onnx", x)
    # unsigned 8-bit input -> conv -> ReLU -> unsigned 8-bit Q: layers 2 and 4 (the first has a signed input, the
    # last no Q after it)
    assert optimized_op_counts(res.path).get("QLinearConv", 0) == 2
    got = ort_session(res.path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = res.model(x).numpy()
    assert float(np.abs(got - want).mean()) <= 0.01 * float(np.abs(want).mean())


def test_end_of_fit_hook_logs_a_failed_export_and_never_replaces_files(tmp_path, caplog):
    from bb_lightning.deploy.hooks import onnx_path_for, write_onnx_next_to

    assert onnx_path_for(tmp_path / "mixed_precision_config-v2.json") == tmp_path / "model-v2.onnx"
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    cfg = make_config(model, x)
    config_path = tmp_path / "mixed_precision_config.json"
    (tmp_path / "model.onnx").write_bytes(b"older export")
    assert write_onnx_next_to(config_path, model, cfg, x) == tmp_path / "model-v1.onnx"
    assert (tmp_path / "model.onnx").read_bytes() == b"older export"
    bad = nn.Sequential(OddConv(3, 4, 3)).eval()
    with caplog.at_level("ERROR"):
        assert write_onnx_next_to(config_path, bad, make_config(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), x), x) is None
    assert "ONNX export" in caplog.text and "OddConv" in caplog.text
    assert not (tmp_path / "model-v2.onnx").exists()
