"""`bb-lightning report` on a BitPruning config with per-channel widths: bits are the mean over channels."""

from __future__ import annotations

import torch
from torch import nn

import bb_lightning  # noqa: F401
from bb_lightning.config import WrapConfig
from bb_lightning.export import MixedPrecisionConfig, build_config
from bb_lightning.methods.bit_pruning import BitPruningConfig
from bb_lightning.app.report import layer_rows
from bb_lightning.wrap.swap import apply_plan, plan_layers


def test_layer_rows_average_per_channel_widths():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    records = plan_layers(model, WrapConfig(), torch.zeros(1, 1, 8, 8))
    modules = apply_plan(model, records, "bit_pruning", BitPruningConfig(weight_granularity="channel"))
    with torch.no_grad():
        modules["0"].weight_quantizer.bitlength.copy_(torch.tensor([2.0, 3.0, 5.0, 8.0]))
    model(torch.randn(2, 1, 8, 8))
    cfg = MixedPrecisionConfig.from_dict(build_config(records, modules, "bit_pruning", 8).to_dict())
    rows = {r["layer"]: r for r in layer_rows(cfg)}
    assert cfg.layers["0"]["weight"]["bits"] == 8
    assert rows["0"]["weight_bits"] == 4.5  # (2 + 3 + 5 + 8) / 4, as the BOPs count it
    assert rows["3"]["weight_bits"] == 8 and rows["3"]["input_bits"] == 8
