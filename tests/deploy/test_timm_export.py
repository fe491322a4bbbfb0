"""`export_onnx` over timm families: the file passes the checker, runs in onnxruntime like the PyTorch deploy model,
and the pruned channels that can be removed are removed (or stay masked, with the reason, where they cannot)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import timm
import torch
from deploy_configs import make_config

from bb_lightning.deploy import export_onnx, ort_session

pytestmark = pytest.mark.timm_models

# id -> (timm name, create kwargs, grid, removal expected: "some" channels removed, or "none" with the reason)
FAMILIES = {
    "resnet": ("test_resnet", {}, "symmetric", "some"),
    "mobilenetv3": ("mobilenetv3_small_050", {}, "minmax", "some"),
    "efficientnet": ("test_efficientnet", {}, "symmetric", "some"),
    "convnext": ("test_convnext", {}, "symmetric", "some"),
    "regnet": ("regnetx_002", {}, "minmax", "some"),
    "vit": ("test_vit", {"img_size": 32}, "symmetric", "some"),
    "nfnet": ("test_nfnet", {}, "minmax", "some"),
    "conv2d_same": ("test_efficientnet", {"pad_type": "same"}, "symmetric", "some"),
}
# what keeps pruned channels masked in each family (where removal would change outputs or cannot be sliced)
MASKED_BECAUSE = {
    "convnext": "path through LN",  # LayerNorm normalises over channels
    "regnet": "grouped conv",  # torch-pruning cannot slice grouped convs
    "vit": "torch-pruning maps",  # attention heads: qkv channels are not 1:1 with the next layer's inputs
    "efficientnet": "multiplicative path",  # SE gates
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_timm_family_exports_runs_and_removes_what_it_can(family, tmp_path):
    name, kwargs, grid, _ = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    cfg = make_config(model, x, weight_bits=(4, 8, 3), input_bits=(8, 16, 6), grid=grid,
                      per_channel=grid == "minmax", prune=0.4 if grid == "symmetric" else 0.0)
    if grid == "minmax":  # BitPruning does not prune: mask a few channels by hand on a symmetric copy
        cfg = make_config(model, x, weight_bits=(4, 8, 3), input_bits=(8, 16, 6), prune=0.4)
        for layer in list(cfg.layers)[1::2]:
            w = cfg.layers[layer]["weight"]
            if w is not None:
                lo, hi = w["range"]
                cfg.layers[layer]["weight"] = {"bits": w["bits"], "signed": True, "range": [lo, hi], "grid": "minmax"}
                cfg.layers[layer]["kept_channels"] = None
    res = export_onnx(model, cfg, tmp_path / "m.onnx", x)
    onnx.checker.check_model(str(res.path), full_check=True)
    dep = res.model
    with torch.no_grad():
        want = dep(x).numpy()
    got = ort_session(res.path).run(None, {"input": x.numpy()})[0]
    assert got.shape == want.shape
    # float accumulation order differs between runtimes: a few low-bit rounding decisions flip (random weights,
    # 3-bit layers), so the logits are compared on average
    assert float(np.abs(got - want).mean()) <= 0.05 * float(np.abs(want).mean()) + 1e-5
    rows = res.removal
    assert sum(r["removed"] for r in rows) > 0, f"{family}: nothing removed: {rows[:3]}"
    if family in MASKED_BECAUSE:
        reasons = " ".join(r["reason"] for r in rows if r["kept_zero"])
        assert MASKED_BECAUSE[family] in reasons, reasons
    params = {i.name: i for i in onnx.load(str(res.path)).graph.initializer}
    int4 = onnx.TensorProto.UINT4 if grid == "minmax" else onnx.TensorProto.INT4
    assert any(i.data_type == int4 for i in params.values())
