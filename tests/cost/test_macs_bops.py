"""MAC counting, BOPs / memory report and the regulariser sum (spec 3.2-3.4, 3.7, 4.1-4.4, 8.1, 8.2).

Expected MACs are counted by hand per layer (``C_out * H_out * W_out * k_h * k_w * C_in / groups`` for convs,
``in * out * tokens`` for linears); expected BOPs and regulariser sums are built here from those hand counts and the
spec's formulas.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bb_lightning.config import WrapConfig
from bb_lightning.cost.penalty import CostConfig
from bb_lightning.cost.macs import count_macs
from bb_lightning.methods.bayesian_bits import BayesianBitsRegularizer as CostRegularizer
from bb_lightning.cost.facts import LayerCost, cost_totals, layer_costs
from bb_lightning.methods.bayesian_bits.config import BayesianBitsConfig
from bb_lightning.wrap.swap import apply_plan, plan_layers

C = (2.0 / 3.0) * math.log(11.0)  # P(z > 0) = sigmoid(log_alpha + C)
GATES_FOR_BITS = {2: (-6, -6, -6, -6), 4: (6, -6, -6, -6), 8: (6, 6, -6, -6), 16: (6, 6, 6, -6), 32: (6, 6, 6, 6)}


def pi(la: float) -> float:
    return 1.0 / (1.0 + math.exp(-(la + C)))


def single(layer: nn.Module, example: torch.Tensor) -> int:
    return count_macs(layer, {"l": layer}, example)["l"].macs


# ----------------------------------------------------------------------------------------------------------------
# MACs of single layers
# ----------------------------------------------------------------------------------------------------------------
def test_plain_conv():
    # 3 -> 8, 3x3, stride 1, padding 1 on 10x10: 8 * 10 * 10 * 9 * 3
    assert single(nn.Conv2d(3, 8, 3, padding=1), torch.zeros(1, 3, 10, 10)) == 8 * 100 * 9 * 3


def test_grouped_conv():
    # 8 -> 12, groups 4 (2 input channels per group), 3x3, padding 1 on 10x10
    assert single(nn.Conv2d(8, 12, 3, padding=1, groups=4), torch.zeros(1, 8, 10, 10)) == 12 * 100 * 9 * 2


def test_depthwise_conv_strided():
    # 8 channels, groups 8, 3x3, stride 2, padding 1 on 9x9 -> 5x5
    assert single(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), torch.zeros(1, 8, 9, 9)) == 8 * 25 * 9 * 1


def test_strided_conv_with_asymmetric_padding_and_kernel():
    # 3 -> 5, kernel (3, 5), stride (2, 3), padding (1, 2) on 11x13: H = (11+2-3)//2+1 = 6, W = (13+4-5)//3+1 = 5
    conv = nn.Conv2d(3, 5, (3, 5), stride=(2, 3), padding=(1, 2))
    assert single(conv, torch.zeros(1, 3, 11, 13)) == 5 * 6 * 5 * 3 * 5 * 3


def test_dilated_conv():
    # 2 -> 3, 3x3, dilation 2, no padding on 9x9 -> 5x5
    assert single(nn.Conv2d(2, 3, 3, dilation=2), torch.zeros(1, 2, 9, 9)) == 3 * 25 * 9 * 2


def test_conv1d():
    # 4 -> 6, kernel 5, stride 2, padding 1 on length 20 -> (20 + 2 - 5)//2 + 1 = 9
    assert single(nn.Conv1d(4, 6, 5, stride=2, padding=1), torch.zeros(1, 4, 20)) == 6 * 9 * 4 * 5


def test_grouped_conv1d():
    assert single(nn.Conv1d(6, 9, 3, groups=3), torch.zeros(1, 6, 12)) == 9 * 10 * 3 * 2


def test_linear_2d_and_3d_tokens():
    assert single(nn.Linear(16, 24), torch.zeros(1, 16)) == 16 * 24
    # (B, T, D) token input: in * out * T, independent of B
    assert single(nn.Linear(16, 24), torch.zeros(1, 7, 16)) == 16 * 24 * 7
    assert single(nn.Linear(16, 24), torch.zeros(3, 7, 16)) == 16 * 24 * 7
    assert single(nn.Linear(16, 24, bias=False), torch.zeros(2, 3, 5, 16)) == 16 * 24 * 15


def test_batch_size_is_divided_out():
    conv = nn.Conv2d(3, 4, 3)
    assert single(conv, torch.zeros(5, 3, 8, 8)) == single(conv, torch.zeros(1, 3, 8, 8)) == 4 * 36 * 27


def test_shared_layer_is_counted_per_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(10, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    m = Twice()
    assert count_macs(m, {"fc": m.fc}, torch.zeros(2, 10))["fc"].macs == 2 * 100


def test_count_restores_training_mode_and_reports_order_and_shape():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2), nn.Flatten(), nn.Linear(2 * 9, 3))
    net.train()
    layers = {"2": net[2], "0": net[0], "4": net[4]}  # dict order differs from execution order
    counts = count_macs(net, layers, torch.zeros(2, 1, 10, 10))
    assert net.training
    assert counts["0"].order == 0 and counts["2"].order == 1 and counts["4"].order == 2
    assert counts["0"].out_shape == (4, 8, 8)
    assert counts["2"].out_shape == (2, 3, 3)
    assert counts["0"].macs == 4 * 64 * 9
    assert counts["2"].macs == 2 * 9 * 9 * 4
    assert counts["4"].macs == 18 * 3


def tiny_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # 16x16 -> 8x8: 8*64*27 = 13824
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise 8x8: 8*64*9 = 4608
        nn.ReLU(),
        nn.Conv2d(8, 16, 1),  # pointwise: 16*64*8 = 8192
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),  # 160
    )


def test_tiny_sequential_cnn_plan():
    net = tiny_cnn()
    recs = plan_layers(net, WrapConfig(), torch.zeros(1, 3, 16, 16))
    assert [r.name for r in recs] == ["0", "3", "5", "9"]
    assert [r.macs for r in recs] == [13824, 4608, 8192, 160]
    assert [r.type for r in recs] == ["Conv2d", "Conv2d", "Conv2d", "Linear"]
    assert [r.params for r in recs] == [8 * 27, 8 * 9, 16 * 8, 160]
    # default policy: first layer keeps a float input, the classifier is not pruned
    assert [r.quantize_input for r in recs] == [False, True, True, True]
    assert [r.prune for r in recs] == [True, True, True, False]
    assert recs[0].is_first and recs[-1].is_last


# ----------------------------------------------------------------------------------------------------------------
# LeNet-5 (spec 8.1), relative BOPs (spec 4.3) and the regulariser at init (spec 3.7)
# ----------------------------------------------------------------------------------------------------------------
LENET_MACS = [460_800, 3_276_800, 524_288, 5_120]
LENET_PARAMS = [32 * 25, 64 * 32 * 25, 1024 * 512, 512 * 10]


def lenet5() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(1024, 512), nn.ReLU(),
        nn.Linear(512, 10),
    )  # fmt: skip


def wrapped_lenet(gate_init=(6, 6, -6, -6), prune=True, prune_init=6.0):
    torch.manual_seed(0)
    net = lenet5()
    recs = plan_layers(net, WrapConfig(), torch.zeros(1, 1, 28, 28))
    cfg = BayesianBitsConfig(gate_init=gate_init, prune=prune, prune_init=prune_init)
    mods = apply_plan(net, recs, "bayesian_bits", cfg)
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 1, 28, 28))  # calibrate the input ranges, as the first training batch does
    return net, recs, mods


def test_uncalibrated_inputs_count_as_float():
    torch.manual_seed(0)
    net = lenet5()
    recs = plan_layers(net, WrapConfig(), torch.zeros(1, 1, 28, 28))
    mods = apply_plan(net, recs, "bayesian_bits", BayesianBitsConfig(gate_init=(6, 6, -6, -6)))
    # no training forward yet: input quantizers pass inputs through, so they must not be reported as 8-bit
    assert [(c.w_bits, c.a_bits) for c in layer_costs(recs, mods, input_bits=8)] == [(8, 8)] + [(8, 32)] * 3


def test_lenet5_macs():
    _, recs, _ = wrapped_lenet()
    assert [r.macs for r in recs] == LENET_MACS
    assert sum(r.macs for r in recs) == 4_267_008
    assert max(r.macs for r in recs) == 3_276_800  # MACs_max (spec 3.4)
    assert [r.params for r in recs] == LENET_PARAMS


def set_bits(q, bits):
    with torch.no_grad():
        q.log_alpha.copy_(torch.tensor(GATES_FOR_BITS[bits], dtype=torch.float32))


def lenet_relative_bops(w_bits, a_bits, first_input_bits=8):
    """Spec 4.1 by hand: first layer at (w, 8); all others at (w, a); baseline 32 * 32 * MACs."""
    bops = w_bits * first_input_bits * LENET_MACS[0] + sum(w_bits * a_bits * m for m in LENET_MACS[1:])
    return bops / (1024 * sum(LENET_MACS))


def test_lenet5_relative_bops_at_init_is_w8a8():
    _, recs, mods = wrapped_lenet()
    costs = layer_costs(recs, mods, input_bits=8)
    assert [(c.w_bits, c.a_bits) for c in costs] == [(8, 8)] * 4
    totals = cost_totals(costs)
    assert totals["relative_bops"] == pytest.approx(0.0625, rel=1e-12)  # spec 3.7 / 7.22: 6.25 %
    assert totals["bops"] == pytest.approx(64 * sum(LENET_MACS))
    assert totals["fp32_bops"] == pytest.approx(1024 * 4_267_008)
    assert totals["macs"] == 4_267_008


# spec 4.3, LeNet-5 row (w bits, a bits) -> relative BOPs in percent
SPEC_LENET_TABLE = [(32, 32, 91.90), (16, 16, 23.65), (8, 8, 6.25), (4, 8, 3.125), (4, 4, 1.731), (2, 2, 0.517)]


@pytest.mark.parametrize(("wb", "ab", "percent"), SPEC_LENET_TABLE)
def test_lenet5_uniform_precision_reference_points(wb, ab, percent):
    _, recs, mods = wrapped_lenet()
    for m in mods.values():
        set_bits(m.weight_quantizer, wb)
        if m.input_quantizer is not None:
            set_bits(m.input_quantizer, ab)
    rel = cost_totals(layer_costs(recs, mods, input_bits=8))["relative_bops"]
    assert rel == pytest.approx(lenet_relative_bops(wb, ab), rel=1e-12)
    digits = len(str(percent).split(".")[1])
    assert abs(100 * rel - percent) <= 0.5 * 10**-digits + 1e-9


def test_bops_at_float_equal_1024_macs_for_layers_with_quantized_inputs():
    _, recs, mods = wrapped_lenet(gate_init=(6, 6, 6, 6))
    costs = layer_costs(recs, mods, input_bits=8)
    for rec, c in zip(recs, costs):
        if rec.quantize_input:
            assert c.bops == 1024 * rec.macs
        else:  # the first layer: float weights times the 8-bit image
            assert rec.is_first
            assert c.bops == 32 * 8 * rec.macs
    assert cost_totals(costs)["relative_bops"] == pytest.approx(0.9190, abs=5e-5)  # spec 4.2: 91.90 %


def mnist_init_doubling() -> float:
    """``sum_b b * prod_{b' <= b} pi_b'`` over the doubling gates at the MNIST init 6/6/-6/-6 (spec 3.2, 3.3)."""
    p4, p8, p16, p32 = pi(6), pi(6), pi(-6), pi(-6)
    return 4 * p4 + 8 * p4 * p8 + 16 * p4 * p8 * p16 + 32 * p4 * p8 * p16 * p32


def test_lenet5_regulariser_at_mnist_init_matches_spec():
    """Spec 3.7: sum_k R_k = 36.62 for LeNet-5 at gate init 6/6/-6/-6, pruning init 6, bop prior.

    Our generic wiring attaches an input quantizer to every layer but the first; for a chain its cost weight
    ``MACs_l / MACs_max`` is the reference's producer-activation weight (the consumer's MACs), so the sums agree.
    """
    _, recs, mods = wrapped_lenet()
    reg = CostRegularizer(recs, mods, CostConfig(kind="bops", strength=0.1))
    # independent reference from hand-counted MACs
    mx = max(LENET_MACS)
    doubling = mnist_init_doubling()
    expected = 0.0
    for i, macs in enumerate(LENET_MACS):
        s = macs / mx
        if i < 3:  # pruned weight quantizers: pi_2 * (2 s + s * doubling) (channel mean of equal gates)
            expected += pi(6) * s * (2 + doubling)
        else:  # classifier weights: not pruned
            expected += 1 + s * doubling
        if i > 0:  # input quantizers (activation of the producer), cost weight = consumer's MACs
            expected += 1 + s * doubling
    assert expected == pytest.approx(36.62, abs=0.005)
    raw = reg.raw().item()
    assert raw == pytest.approx(expected, rel=1e-5)
    assert raw == pytest.approx(36.62, abs=0.005)
    assert reg().item() == pytest.approx(0.1 * raw, rel=1e-6)
    # 7 quantizers: 4 weights + 3 inputs (the first layer's input is not quantized, spec 7.17)
    assert len(reg.terms) == 7
    # every gate parameter is reached by the regulariser
    reg().backward()
    for m in mods.values():
        assert m.weight_quantizer.log_alpha.grad is not None
        assert torch.all(m.weight_quantizer.log_alpha.grad != 0)


def vgg7() -> nn.Sequential:
    def cbr(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(
        *cbr(3, 128), *cbr(128, 128), nn.MaxPool2d(2),
        *cbr(128, 256), *cbr(256, 256), nn.MaxPool2d(2),
        *cbr(256, 512), *cbr(512, 512), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8192, 1024, bias=False), nn.BatchNorm1d(1024), nn.ReLU(), nn.Linear(1024, 10),
    )  # fmt: skip


def test_vgg7_macs_regulariser_and_relative_bops_at_init():
    net = vgg7()
    recs = plan_layers(net, WrapConfig(), torch.zeros(1, 3, 32, 32))
    macs = [3_538_944, 150_994_944, 75_497_472, 150_994_944, 75_497_472, 150_994_944, 8_388_608, 10_240]
    assert [r.macs for r in recs] == macs  # spec 8.2
    assert sum(macs) == 615_917_568
    mods = apply_plan(net, recs, "bayesian_bits", BayesianBitsConfig(gate_init=(6, 6, 6, 6), prune_init=6.0))
    raw = CostRegularizer(recs, mods, CostConfig()).raw().item()
    assert raw == pytest.approx(503.31, abs=0.01)  # spec 3.7
    rel = cost_totals(layer_costs(recs, mods, 8))["relative_bops"]
    assert rel == pytest.approx(1 - 0.75 * macs[0] / sum(macs), rel=1e-12)
    assert 100 * rel == pytest.approx(99.57, abs=0.005)  # spec 3.7 / 4.2


# ----------------------------------------------------------------------------------------------------------------
# pruning in the report, memory (spec 4.1, 4.4)
# ----------------------------------------------------------------------------------------------------------------
def test_pruned_bops_and_memory():
    _, recs, mods = wrapped_lenet()
    # prune 8 of 32 channels of conv1 and 16 of 64 of conv2; fc1 at 4-bit weights; fc2 inputs at 2 bits
    q0, q1 = mods["0"].weight_quantizer, mods["3"].weight_quantizer
    with torch.no_grad():
        q0.prune_log_alpha[:8] = -6.0
        q1.prune_log_alpha[::4] = -6.0
    set_bits(mods["7"].weight_quantizer, 4)
    set_bits(mods["9"].input_quantizer, 2)
    costs = layer_costs(recs, mods, input_bits=8)
    assert [c.kept for c in costs] == [24, 48, 512, 10]
    assert [c.channels for c in costs] == [32, 64, 512, 10]
    assert [(c.w_bits, c.a_bits) for c in costs] == [(8, 8), (8, 8), (4, 8), (8, 2)]
    # kappa (spec 4.1): kept outputs x the producer's kept fraction on the input side (conv1 -> conv2 -> fc1)
    kept_frac = [24 / 32, 48 / 64 * 24 / 32, 1.0 * 48 / 64, 1.0]
    assert [r.producer for r in recs] == [None, "0", "3", "7"]
    bits = [(8, 8), (8, 8), (4, 8), (8, 2)]
    exp_bops = [w * a * m * k for (w, a), m, k in zip(bits, LENET_MACS, kept_frac)]
    for c, e in zip(costs, exp_bops):
        assert c.bops == pytest.approx(e, rel=1e-12)
    exp_mem_bits = [w * p * k for (w, _), p, k in zip(bits, LENET_PARAMS, kept_frac)]
    for c, e in zip(costs, exp_mem_bits):
        assert c.weight_bits == pytest.approx(e, rel=1e-12)
    totals = cost_totals(costs)
    assert totals["relative_bops"] == pytest.approx(sum(exp_bops) / (1024 * sum(LENET_MACS)), rel=1e-12)
    assert totals["weight_memory_bytes"] == pytest.approx(sum(exp_mem_bits) / 8, rel=1e-12)
    assert totals["fp32_weight_memory_bytes"] == 4 * sum(LENET_PARAMS)
    assert totals["average_weight_bits"] == pytest.approx(sum(exp_mem_bits) / sum(LENET_PARAMS), rel=1e-12)
    assert totals["pruned_channel_fraction"] == pytest.approx(24 / (32 + 64 + 512 + 10), rel=1e-12)


def test_fully_pruned_layer_costs_nothing():
    _, recs, mods = wrapped_lenet()
    with torch.no_grad():
        mods["3"].weight_quantizer.prune_log_alpha.fill_(-6.0)
    costs = layer_costs(recs, mods, input_bits=8)
    assert costs[1].w_bits == 0 and costs[1].kept == 0
    assert costs[1].bops == 0.0 and costs[1].weight_bits == 0.0


def test_layer_cost_arithmetic():
    c = LayerCost("x", macs=1000, params=300, w_bits=4, a_bits=8, kept=3, channels=4)
    assert c.kept_fraction == 0.75
    assert c.bops == 4 * 8 * 1000 * 0.75
    assert c.fp32_bops == 1024 * 1000
    assert c.weight_bits == 4 * 300 * 0.75
    # widths above 32 count as 32 (float)
    f = LayerCost("f", macs=10, params=5, w_bits=64, a_bits=32, kept=2, channels=2)
    assert f.bops == 1024 * 10 and f.weight_bits == 32 * 5


def test_unwrapped_layers_count_as_float():
    net = tiny_cnn()
    recs = plan_layers(net, WrapConfig(first_layer="float", last_layer="float"), torch.zeros(1, 3, 16, 16))
    assert [r.wrapped for r in recs] == [False, True, True, False]
    mods = apply_plan(net, recs, "bayesian_bits", BayesianBitsConfig(gate_init=(6, 6, -6, -6)))
    assert set(mods) == {"3", "5"}
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 3, 16, 16))  # calibrate the input ranges
    costs = layer_costs(recs, mods, input_bits=8)
    assert [(c.w_bits, c.a_bits) for c in costs] == [(32, 8), (8, 8), (8, 8), (32, 32)]


# ----------------------------------------------------------------------------------------------------------------
# regulariser: memory kind, strength
# ----------------------------------------------------------------------------------------------------------------
def test_memory_regulariser():
    _, recs, mods = wrapped_lenet()
    reg = CostRegularizer(recs, mods, CostConfig(kind="memory", strength=2.0))
    mx = max(LENET_PARAMS)
    doubling = mnist_init_doubling()
    expected = 0.0
    for i, params in enumerate(LENET_PARAMS):
        s = params / mx
        expected += pi(6) * s * (2 + doubling) if i < 3 else 1 + s * doubling
        if i > 0:
            expected += 1.0  # input quantizers get cost weight 0: only the constant 1
    assert reg.raw().item() == pytest.approx(expected, rel=1e-5)
    assert reg().item() == pytest.approx(2.0 * expected, rel=1e-5)


def test_regulariser_responds_to_gates():
    _, recs, mods = wrapped_lenet()
    reg = CostRegularizer(recs, mods, CostConfig())
    before = reg.raw().item()
    set_bits(mods["3"].weight_quantizer, 2)  # the MACs_max layer: 8 -> 2 bits
    after = reg.raw().item()
    p = pi(6)
    doubling8 = 4 * p + 8 * p * p + 16 * p * p * pi(-6) * (1 + 2 * pi(-6))
    doubling2 = 4 * pi(-6) * (1 + 2 * pi(-6) * (1 + 2 * pi(-6) * (1 + 2 * pi(-6))))
    assert before - after == pytest.approx(p * (doubling8 - doubling2), rel=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# regulariser configurations without / with only pruning gates (spec 3.2, 5.6)
# ----------------------------------------------------------------------------------------------------------------
def _doubling(la):
    p = [pi(v) for v in la]
    total, prod = 0.0, 1.0
    for b, pb in zip((4, 8, 16, 32), p):
        prod *= pb
        total += b * prod
    return total


def test_regulariser_single_layer_model():
    # one Linear: first (float input) and last (not pruned) at once -> one plain weight quantizer, R = 1 + doubling
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    recs = plan_layers(net, WrapConfig(), torch.zeros(1, 1, 8, 8))
    assert [(r.macs, r.prune, r.quantize_input) for r in recs] == [(640, False, False)]
    mods = apply_plan(net, recs, "bayesian_bits", BayesianBitsConfig(gate_init=(6, 6, -6, -6)))
    raw = CostRegularizer(recs, mods, CostConfig()).raw().item()
    assert raw == pytest.approx(1 + _doubling((6, 6, -6, -6)), rel=1e-5)


def test_regulariser_weights_only_everything_pruned():
    # weights-only quantization with a prunable classifier: every quantizer has pruning gates
    torch.manual_seed(0)
    net = lenet5()
    recs = plan_layers(net, WrapConfig(quantize_activations=False, last_layer="full"), torch.zeros(1, 1, 28, 28))
    assert all(r.prune and not r.quantize_input for r in recs)
    mods = apply_plan(net, recs, "bayesian_bits", BayesianBitsConfig(gate_init=(6, 6, -6, -6), prune_init=6.0))
    raw = CostRegularizer(recs, mods, CostConfig()).raw().item()
    d = _doubling((6, 6, -6, -6))
    expected = sum(pi(6) * (m / max(LENET_MACS)) * (2 + d) for m in LENET_MACS)
    assert raw == pytest.approx(expected, rel=1e-5)


def test_prune_false_is_quantization_only():
    """``BayesianBitsConfig(prune=False)`` (the ``BayesianBits(prune=False)`` callback argument; spec 5.6
    "quantization only") must create no pruning gate anywhere, so every R_k has the plain form ``1 + ...``."""
    torch.manual_seed(0)
    net = lenet5()
    recs = plan_layers(net, WrapConfig(), torch.zeros(1, 1, 28, 28))
    mods = apply_plan(net, recs, "bayesian_bits", BayesianBitsConfig(gate_init=(6, 6, -6, -6), prune=False))
    has_gates = {n: m.weight_quantizer.prune_log_alpha is not None for n, m in mods.items()}
    assert not any(has_gates.values()), has_gates
    assert all(m.weight_quantizer.keep_mask() is None for m in mods.values())
    d = _doubling((6, 6, -6, -6))
    expected = sum(1 + (m / max(LENET_MACS)) * d for m in LENET_MACS) + sum(
        1 + (m / max(LENET_MACS)) * d for m in LENET_MACS[1:]
    )
    assert CostRegularizer(recs, mods, CostConfig()).raw().item() == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# regularizer="expected_bops": the expected relative BOPs (product of weight and input bits) in percent
# ----------------------------------------------------------------------------------------------------------------
def expected_bits64(log_alpha, cutoff=-2.0, bits=(2, 4, 8, 16, 32)) -> float:
    """float64 by hand: 2 + sum_b (b - b/2) prod_{b' <= b} pi_b', gates at or below the cut-off (and above) off."""
    out, cum = float(bits[0]), 1.0
    for la, lo, hi in zip(log_alpha, bits[:-1], bits[1:]):
        if la <= cutoff:
            break
        cum *= pi(la)
        out += (hi - lo) * cum
    return out


@pytest.mark.parametrize("wb,ab", [(2, 2), (4, 4), (8, 2), (16, 8), (32, 32)])
def test_expected_bops_at_hard_gates_equals_reported_relative_bops(wb, ab):
    _, recs, mods = wrapped_lenet()
    far = {2: (-20, -20, -20, -20), 4: (20, -20, -20, -20), 8: (20, 20, -20, -20), 16: (20, 20, 20, -20),
           32: (20, 20, 20, 20)}
    with torch.no_grad():
        for m in mods.values():
            m.weight_quantizer.log_alpha.copy_(torch.tensor(far[wb], dtype=torch.float32))
            m.weight_quantizer.prune_log_alpha is None or m.weight_quantizer.prune_log_alpha.fill_(20.0)
            if m.input_quantizer is not None:
                m.input_quantizer.log_alpha.copy_(torch.tensor(far[ab], dtype=torch.float32))
        q = mods["3"].weight_quantizer.prune_log_alpha
        q[::4] = -20.0  # a quarter of conv2 pruned
    reg = CostRegularizer(recs, mods, CostConfig(kind="expected_bops", strength=0.1))
    rel = cost_totals(layer_costs(recs, mods, input_bits=8))["relative_bops"]
    assert reg.raw().item() == pytest.approx(100 * rel, rel=1e-5)
    assert reg().item() == pytest.approx(0.1 * 100 * rel, rel=1e-5)


def test_expected_bops_matches_float64_reference_and_charges_the_first_layer_its_8_bit_input():
    _, recs, mods = wrapped_lenet()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in mods.values():
            for q in (m.weight_quantizer, m.input_quantizer):
                if q is not None:
                    q.log_alpha.copy_(torch.empty(4).uniform_(-3, 4, generator=g))
                    if q.prune_log_alpha is not None:
                        q.prune_log_alpha.copy_(torch.empty(q.prune_log_alpha.numel()).uniform_(-3, 4, generator=g))
    reg = CostRegularizer(recs, mods, CostConfig(kind="expected_bops", strength=1.0))
    names = ["0", "3", "7", "9"]
    total = 0.0
    keep = {n: 1.0 for n in names}
    for i, name in enumerate(names):
        wq, iq = mods[name].weight_quantizer, mods[name].input_quantizer
        ew = expected_bits64(wq.log_alpha.tolist())
        if wq.prune_log_alpha is not None:
            keep[name] = sum(pi(v) for v in wq.prune_log_alpha.tolist()) / wq.prune_log_alpha.numel()
        ea = 8.0 if iq is None else expected_bits64(iq.log_alpha.tolist())
        keep_in = keep[names[i - 1]] if i else 1.0  # a chain: each layer reads its predecessor's channels
        total += LENET_MACS[i] * ew * keep[name] * keep_in * ea
    value = reg.raw()
    assert value.item() == pytest.approx(100 * total / (1024 * sum(LENET_MACS)), rel=1e-5)
    # the gradient of a weight bit is MACs x the input's expected bits: the first layer pays for its 8-bit image
    value.backward()
    w0, w1 = mods["0"].weight_quantizer, mods["3"].weight_quantizer
    assert w0.log_alpha.grad is not None and bool(torch.all(w0.log_alpha.grad > 0))
    assert mods["3"].input_quantizer.log_alpha.grad is not None
    assert w1.prune_log_alpha.grad is not None and bool(torch.all(w1.prune_log_alpha.grad > 0))


def test_expected_bops_is_zero_once_frozen_and_rejected_by_methods_without_it():
    _, recs, mods = wrapped_lenet()
    reg = CostRegularizer(recs, mods, CostConfig(kind="expected_bops"))
    assert reg.raw().item() == pytest.approx(6.25, rel=5e-3)  # w8a8 start (P(z > 0) = 0.9995), nothing pruned
    for m in mods.values():
        m.weight_quantizer.freeze()
        if m.input_quantizer is not None:
            m.input_quantizer.freeze()
    assert reg.raw().item() == 0.0
    from bb_lightning.cost.penalty import CostRegularizer as Plain
    from bb_lightning.errors import BBConfigError

    with pytest.raises(BBConfigError, match="expected_bops"):
        Plain(recs, mods, CostConfig(kind="expected_bops"))
