"""Export straight from searched models (the search callbacks' end-of-fit case): Bayesian Bits with training-time or
static BatchNorm folding and random gates, BitPruning with per-group bitlengths on min-max grids and with learned
symmetric weight grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bb_lightning import MixedPrecisionConfig, export_onnx, ort_session
from bb_lightning.config import WrapConfig
from bb_lightning.export import build_config
from bb_lightning.methods.bayesian_bits.config import BayesianBitsConfig
from bb_lightning.methods.bit_pruning.config import BitPruningConfig
from bb_lightning.wrap.swap import apply_plan, plan_layers


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4),
    )  # fmt: skip
    for bn in (m[1], m[4]):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return m


#: BitPruning settings by test id: per-group bitlengths on min-max grids, and learned symmetric weight grids
BIT_PRUNING = {
    "group": BitPruningConfig(weight_granularity="group", group_size=4),
    "symmetric": BitPruningConfig(weight_grid="symmetric", learn_ranges=True),
}


@pytest.mark.parametrize(
    "method,fold",
    [("bayesian_bits", "train"), ("bayesian_bits", "static"), ("bit_pruning", "group"), ("bit_pruning", "symmetric")],
)
def test_searched_model_exports_and_runs_like_its_evaluation_pass(method, fold, tmp_path):
    """``fold``: the BatchNorm folding for Bayesian Bits, the `BIT_PRUNING` settings for BitPruning."""
    model, x = cnn(), torch.randn(16, 3, 8, 8)
    bp = BIT_PRUNING.get(fold) if method == "bit_pruning" else None
    if bp is None:
        recs = plan_layers(model, WrapConfig(fold_bn=fold), x[:1])
        mods = apply_plan(model, recs, method, BayesianBitsConfig())
    else:
        recs = plan_layers(model, WrapConfig(), x[:1])
        mods = apply_plan(model, recs, method, bp)
    model.train()
    with torch.no_grad():
        model(x)  # input ranges, BN statistics through the fold
    g = torch.Generator().manual_seed(1)
    for i, m in enumerate(mods.values()):  # mixed widths and, for Bayesian Bits, pruned channels
        q = m.weight_quantizer
        with torch.no_grad():
            if method == "bayesian_bits":
                q.log_alpha.copy_(torch.randn(q.log_alpha.shape, generator=g) * 4)
                if q.prune_log_alpha is not None:
                    q.prune_log_alpha.copy_(torch.randn(q.prune_log_alpha.shape, generator=g) * 2 + 1.5)
            else:
                q.bitlength.copy_(torch.rand(q.bitlength.shape, generator=g) + (1.2, 2.5, 4.5, 6.5)[i % 4])
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy()
    config = MixedPrecisionConfig.from_dict(build_config(recs, mods, method, 8, "Sequential").to_dict())
    res = export_onnx(model, config, tmp_path / "m.onnx", x[:1])
    got = ort_session(res.path).run(None, {"input": x.numpy()})[0]
    assert float(np.abs(got - ref).mean()) <= 0.02 * float(np.abs(ref).mean())
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
    if bp is not None:  # every weight on the configured grid (min-max grids carry a "grid" key)
        grids = {spec["weight"].get("grid", "symmetric") for spec in config.layers.values() if spec["weight"]}
        assert grids == {bp.weight_grid.value}, grids
    widths = {v["weight"] for v in res.layers.values()}
    assert len(widths) > 1, widths  # really mixed
    if method == "bayesian_bits":
        assert {f["mode"] for f in config.model["bn_fold"].values()} == {fold}
