"""The BitPruning bit-cost regulariser (BitPruning spec 3.2): every kind against hand-counted sizes of a tiny net.

The net (input 1x4x4, first layer weights only, so its input counts at ``input_bits`` = 8):

=======  ==========================  ======  =============  ========
layer    shape                       params  input elements MACs
=======  ==========================  ======  =============  ========
c1       Conv2d(1, 4, 3, padding=1)  36      16             4*16*9*1  = 576
c2       Conv2d(4, 8, 3, padding=1)  288     64             8*16*9*4  = 4608
fc       Linear(128, 10)             1280    128            1280
=======  ==========================  ======  =============  ========
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bb_lightning  # noqa: F401  (registers the methods)
from bb_lightning.config import WrapConfig
from bb_lightning.methods.bit_pruning import BitCostConfig, BitCostRegularizer
from bb_lightning.cost.facts import cost_totals, layer_costs
from bb_lightning.errors import BBConfigError
from bb_lightning.methods.bit_pruning import BitPruningConfig
from bb_lightning.wrap.swap import apply_plan, plan_layers

PARAMS = {"c1": 36, "c2": 288, "fc": 1280}
NUMEL = {"c1": 16, "c2": 64, "fc": 128}
MACS = {"c1": 576, "c2": 4608, "fc": 1280}
W_BITS = {"c1": 3.0, "c2": 5.5, "fc": 2.25}
A_BITS = {"c1": 8.0, "c2": 4.0, "fc": 6.5}  # c1: the network input, fixed at input_bits


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(1))


def _wrapped(granularity: str = "tensor", **wrap_kwargs):
    torch.manual_seed(0)
    model = Tiny()
    records = plan_layers(model, WrapConfig(**wrap_kwargs), torch.zeros(1, 1, 4, 4))
    modules = apply_plan(model, records, "bit_pruning", BitPruningConfig(weight_granularity=granularity))
    model(torch.rand(2, 1, 4, 4))  # calibrate input ranges
    for name, m in modules.items():
        with torch.no_grad():
            m.weight_quantizer.bitlength.fill_(W_BITS[name])
            if m.input_quantizer is not None:
                m.input_quantizer.bitlength.fill_(A_BITS[name])
    return model, records, modules


def _expected(kind: str) -> float:
    L = ("c1", "c2", "fc")
    if kind == "average_bits":  # sites: 3 weights + 2 learned inputs
        return (sum(W_BITS.values()) + A_BITS["c2"] + A_BITS["fc"]) / 5 / 32
    if kind == "weight_memory":
        return sum(PARAMS[n] * W_BITS[n] for n in L) / (32 * sum(PARAMS.values()))
    if kind == "activation_memory":
        return sum(NUMEL[n] * A_BITS[n] for n in L) / (32 * sum(NUMEL.values()))
    if kind == "bops":
        return sum(MACS[n] * W_BITS[n] * A_BITS[n] for n in L) / (1024 * sum(MACS.values()))
    if kind == "bitserial_weight":
        return sum(MACS[n] * W_BITS[n] for n in L) / (32 * sum(MACS.values()))
    assert kind == "bitserial_activation"
    return sum(MACS[n] * A_BITS[n] for n in L) / (32 * sum(MACS.values()))


KINDS = ["average_bits", "weight_memory", "activation_memory", "bops", "bitserial_weight", "bitserial_activation"]


def test_hand_counted_sizes():
    _, records, _ = _wrapped()
    assert {r.name: (r.params, r.input_numel, r.macs) for r in records} == {
        n: (PARAMS[n], NUMEL[n], MACS[n]) for n in PARAMS
    }


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_matches_hand_computation(kind):
    _, records, modules = _wrapped()
    reg = BitCostRegularizer(records, modules, BitCostConfig(kind=kind, strength=0.3))
    assert float(reg.raw().detach()) == pytest.approx(_expected(kind), rel=1e-6)
    assert float(reg()) == pytest.approx(0.3 * _expected(kind), rel=1e-6)
    scale = 32.0 if kind == "average_bits" else 1.0
    assert float(reg.value()) == pytest.approx(scale * _expected(kind), rel=1e-6)


def test_bops_gradient_is_bilinear():
    _, records, modules = _wrapped()
    reg = BitCostRegularizer(records, modules, BitCostConfig(kind="bops", strength=1.0))
    reg().backward()
    total = 1024 * sum(MACS.values())
    c2 = modules["c2"]
    assert float(c2.weight_quantizer.bitlength.grad) == pytest.approx(MACS["c2"] * A_BITS["c2"] / total, rel=1e-5)
    assert float(c2.input_quantizer.bitlength.grad) == pytest.approx(MACS["c2"] * W_BITS["c2"] / total, rel=1e-5)


def test_integer_bops_and_memory_equal_the_report():
    _, records, modules = _wrapped()
    for name, m in modules.items():
        with torch.no_grad():
            m.weight_quantizer.bitlength.fill_(round(W_BITS[name]))
            if m.input_quantizer is not None:
                m.input_quantizer.bitlength.fill_(round(A_BITS[name]))
    totals = cost_totals(layer_costs(records, modules, 8))
    bops = BitCostRegularizer(records, modules, BitCostConfig(kind="bops")).raw()
    mem = BitCostRegularizer(records, modules, BitCostConfig(kind="weight_memory")).raw()
    assert float(bops) == pytest.approx(totals["relative_bops"], rel=1e-6)
    assert float(mem) == pytest.approx(totals["weight_memory_bytes"] / totals["fp32_weight_memory_bytes"], rel=1e-6)


def test_float_layers_count_at_32_bits():
    _, records, modules = _wrapped(exclude=["c2"])
    reg = BitCostRegularizer(records, modules, BitCostConfig(kind="bops"))
    # c2 float: w = a = 32; fc's input quantizer still learned
    expect = (576 * 3.0 * 8.0 + 4608 * 32 * 32 + 1280 * 2.25 * 6.5) / (1024 * (576 + 4608 + 1280))
    assert float(reg.raw()) == pytest.approx(expect, rel=1e-6)


def test_per_channel_widths_count_by_share():
    _, records, modules = _wrapped("channel")
    with torch.no_grad():
        modules["c2"].weight_quantizer.bitlength.copy_(torch.arange(1.0, 9.0) * 0.5 + 2.0)  # mean 4.25
    reg = BitCostRegularizer(records, modules, BitCostConfig(kind="weight_memory"))
    w = {**W_BITS, "c2": 4.25}
    expect = sum(PARAMS[n] * w[n] for n in PARAMS) / (32 * sum(PARAMS.values()))
    assert float(reg.raw()) == pytest.approx(expect, rel=1e-6)


def test_hinge_budget_is_zero_under_target_and_quadratic_over():
    _, records, modules = _wrapped()
    cost = _expected("bops")
    over = BitCostRegularizer(records, modules, BitCostConfig(kind="bops", strength=2.0, target=cost / 2))
    assert float(over()) == pytest.approx(2.0 * (2.0 - 1.0) ** 2, rel=1e-5)
    under = BitCostRegularizer(records, modules, BitCostConfig(kind="bops", strength=2.0, target=cost * 2))
    assert float(under()) == 0.0
    avg = BitCostRegularizer(records, modules, BitCostConfig(kind="average_bits", strength=1.0, target=2.0))
    bits = _expected("average_bits") * 32
    assert float(avg()) == pytest.approx((bits / 2.0 - 1.0) ** 2, rel=1e-5)


def test_dual_ascent_moves_the_multiplier_and_survives_state_dict():
    _, records, modules = _wrapped()
    cost = _expected("bops")
    cfg = BitCostConfig(kind="bops", strength=0.5, target=cost / 2, budget_mode="dual", dual_lr=0.1)
    reg = BitCostRegularizer(records, modules, cfg)
    first = reg()
    assert float(first) == pytest.approx(0.5 * 2.0, rel=1e-5)
    assert float(reg.strength) == pytest.approx(0.5, rel=1e-5)  # computing the penalty changes no state
    reg.update()  # the dual step (the search callback calls it once per training loss)
    first.backward()  # the in-place multiplier update must not break backward
    assert float(reg.strength) == pytest.approx(0.5 + 0.1 * (2.0 - 1.0), rel=1e-5)
    state = reg.state_dict()
    fresh = BitCostRegularizer(records, modules, cfg)
    fresh.load_state_dict(state)
    assert float(fresh.strength) == pytest.approx(0.6, rel=1e-5)
    under = BitCostRegularizer(records, modules, BitCostConfig(kind="bops", strength=0.05, target=cost * 4,
                                                               budget_mode="dual", dual_lr=1.0))
    under()
    under.update()
    assert float(under.strength) == 0.0  # max(0, 0.05 + 1.0 * (0.25 - 1))


def test_schedule_scale_multiplies_the_penalty():
    _, records, modules = _wrapped()
    reg = BitCostRegularizer(records, modules, BitCostConfig(kind="bops", strength=1.0))
    reg.scale = 0.0
    assert float(reg()) == 0.0
    reg.scale = 0.25
    assert float(reg()) == pytest.approx(0.25 * _expected("bops"), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (dict(kind="flops"), "regularizer"),
        (dict(strength=-1), "strength"),
        (dict(target=0), "target"),
        (dict(target=1.5), "target"),
        (dict(kind="average_bits", target=40), "target"),
        (dict(budget_mode="soft"), "budget_mode"),
        (dict(dual_lr=0), "dual_lr"),
    ],
)
def test_config_errors_name_the_argument(kwargs, key):
    with pytest.raises(BBConfigError, match=key):
        BitCostConfig(**kwargs)
