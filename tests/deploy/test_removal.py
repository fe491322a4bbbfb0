"""Exact channel removal: a removable channel changes no output and disappears from producer, BN and consumers;
channels whose removal would change outputs stay as zero rows, with the reason."""

from __future__ import annotations

import numpy as np
import torch
from deploy_configs import make_config
from torch import nn

from bb_lightning.deploy import export_onnx, ort_session, to_deploy_model


class Block(nn.Module):
    """conv-BN-ReLU -> conv-BN-ReLU, a residual partner (conv_b) added to conv2's output, then a linear head."""

    def __init__(self, residual: bool = False, padded: bool = False) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False) if padded else nn.Conv2d(8, 8, 1, bias=False)
        self.conv2, self.bn2 = conv2, nn.BatchNorm2d(8)
        self.residual = residual
        self.conv_b = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.residual:
            y = y + self.conv_b(x)
        y = torch.relu(y)
        return self.fc(y.mean((2, 3)))


def _model(residual=False, shift=-1.0, padded=False):
    torch.manual_seed(0)
    m = Block(residual, padded).eval()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.fill_(0.1)
        m.bn1.bias[2] = shift  # channel 2's constant BN shift: killed by the ReLU when negative
        m.bn2.bias[5] = shift
        m.conv_b.bias.zero_()
    return m


def _prune(cfg, layer, channels):
    n = cfg.layers[layer]["weight_shape"][0]
    cfg.layers[layer]["kept_channels"] = [i for i in range(n) if i not in channels]


def _same_outputs(model, cfg, x, masked, dep, tmp_path):
    """The deploy model equals the masked one, and the exported ONNX equals the deploy model."""
    with torch.no_grad():
        np.testing.assert_allclose(dep(x).numpy(), masked(x).numpy(), rtol=0, atol=1e-6)
    res = export_onnx(model, cfg, tmp_path / "m.onnx", x)
    got = ort_session(res.path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, dep(x).numpy(), rtol=1e-4, atol=1e-5)


def test_removable_channel_is_removed_everywhere_and_changes_no_output(tmp_path):
    model, x = _model(), torch.randn(4, 3, 8, 8)
    cfg = make_config(model, x, weight_bits=(4,), input_bits=(8,))
    _prune(cfg, "conv1", [2])
    _prune(cfg, "conv2", [5])
    masked = to_deploy_model(model, cfg, x, remove_pruned=False)
    dep = to_deploy_model(model, cfg, x)
    rows = {r["layer"]: r for r in dep.bb_removal_report}
    assert rows["conv1"]["removed"] == 1 and rows["conv2"]["removed"] == 1, rows
    assert dep.conv1.weight.shape[0] == 7 and dep.conv2.weight.shape[:2] == (7, 7) and dep.fc.weight.shape[1] == 7
    _same_outputs(model, cfg, x, masked, dep, tmp_path)


def test_channel_whose_bn_shift_survives_the_activation_stays_as_zero_rows_in_front_of_a_padded_conv():
    model, x = _model(shift=0.5, padded=True), torch.randn(4, 3, 8, 8)
    cfg = make_config(model, x, weight_bits=(4,), input_bits=(8,))
    _prune(cfg, "conv1", [2])
    dep = to_deploy_model(model, cfg, x)
    row = {r["layer"]: r for r in dep.bb_removal_report}["conv1"]
    assert row["removed"] == 0 and row["kept_zero"] == 1 and "nonzero at the input of `conv2`" in row["reason"]
    assert dep.conv1.weight.shape[0] == 8


def test_residual_coupled_channel_that_one_producer_keeps_is_not_removed():
    model, x = _model(residual=True), torch.randn(4, 3, 8, 8)
    cfg = make_config(model, x, weight_bits=(4,), input_bits=(8,))
    _prune(cfg, "conv2", [5])  # conv_b (added to conv2's output) keeps channel 5
    dep = to_deploy_model(model, cfg, x)
    row = {r["layer"]: r for r in dep.bb_removal_report}["conv2"]
    assert row["removed"] == 0 and "coupled producer `conv_b` keeps it" in row["reason"]
    _prune(cfg, "conv_b", [5])  # both producers prune it, its sum is 0 + 0 (-1 shift through the ReLU)
    dep = to_deploy_model(model, cfg, x)
    rows = {r["layer"]: r for r in dep.bb_removal_report}
    assert rows["conv2"]["removed"] == 1 and dep.conv_b.weight.shape[0] == 7 and dep.fc.weight.shape[1] == 7


def test_constant_in_front_of_an_unpadded_conv_is_folded_into_its_bias_and_the_channel_removed(tmp_path):
    model, x = _model(shift=0.5), torch.randn(4, 3, 8, 8)  # conv1's channel 2 emits relu(0.5 - ...) > 0
    cfg = make_config(model, x, weight_bits=(4,), input_bits=(8,))
    _prune(cfg, "conv1", [2])
    masked = to_deploy_model(model, cfg, x, remove_pruned=False)
    dep = to_deploy_model(model, cfg, x)
    row = {r["layer"]: r for r in dep.bb_removal_report}["conv1"]
    assert row["removed"] == 1 and row["kept_zero"] == 0, row
    assert dep.conv1.weight.shape[0] == 7 and dep.conv2.weight.shape[1] == 7
    with torch.no_grad():  # the constant really was nonzero: conv2's bias changed by it
        assert not torch.allclose(dep.conv2.bias, masked.conv2.bias)
    _same_outputs(model, cfg, x, masked, dep, tmp_path)


class FlatNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> flatten -> linear -> ReLU -> linear, all with biases: a pruned channel is its
    ReLU'd bias, a constant (16 features each after the flatten)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 3), nn.Conv2d(6, 4, 3)
        self.fc1, self.fc = nn.Linear(4 * 4 * 4, 8), nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y))
        return self.fc(torch.relu(self.fc1(torch.flatten(y, 1))))


def test_constants_after_flatten_fold_into_the_linear_consumer(tmp_path):
    torch.manual_seed(0)
    model, x = FlatNet().eval(), torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        model.conv1.bias.fill_(0.3)
        model.conv2.bias.fill_(0.2)
        model.fc1.bias.fill_(0.1)
    cfg = make_config(model, x, weight_bits=(4,), input_bits=(4,))
    _prune(cfg, "conv1", [1, 4])  # into conv2, an unpadded 3x3 conv
    _prune(cfg, "conv2", [0, 3])  # into fc1 through the flatten (16 features each)
    _prune(cfg, "fc1", [5])  # into the classifier
    masked = to_deploy_model(model, cfg, x, remove_pruned=False)
    dep = to_deploy_model(model, cfg, x)
    rows = {r["layer"]: r for r in dep.bb_removal_report}
    assert [rows[n]["removed"] for n in ("conv1", "conv2", "fc1")] == [2, 2, 1], rows
    assert dep.conv2.weight.shape[:2] == (2, 4) and dep.fc1.weight.shape == (7, 32) and dep.fc.weight.shape[1] == 7
    _same_outputs(model, cfg, x, masked, dep, tmp_path)


def test_minmax_consumer_grid_that_excludes_zero_keeps_the_channel():
    model, x = _model(padded=True), torch.randn(4, 3, 8, 8)
    cfg = make_config(model, x, weight_bits=(4,), input_bits=(8,))
    _prune(cfg, "conv1", [2])
    cfg.layers["conv2"]["input"] = {"bits": 4, "signed": False, "range": [0.05, 2.0], "grid": "minmax"}
    dep = to_deploy_model(model, cfg, x)
    row = {r["layer"]: r for r in dep.bb_removal_report}["conv1"]
    assert row["removed"] == 0 and "nonzero at the input" in row["reason"]


def test_fully_pruned_layer_keeps_one_zero_channel_and_exports(tmp_path):
    model, x = _model(), torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        model.bn1.bias.fill_(-1.0)  # every constant BN shift is killed by the ReLU: all 8 channels removable
    cfg = make_config(model, x, weight_bits=(4,), input_bits=(8,))
    _prune(cfg, "conv1", list(range(8)))
    masked = to_deploy_model(model, cfg, x, remove_pruned=False)
    dep = to_deploy_model(model, cfg, x)
    row = {r["layer"]: r for r in dep.bb_removal_report}["conv1"]
    assert row["removed"] == 7 and row["kept_zero"] == 1 and "one zero channel kept" in row["reason"], row
    assert dep.conv1.weight.shape[0] == 1 and dep.conv2.weight.shape[1] == 1
    _same_outputs(model, cfg, x, masked, dep, tmp_path)
