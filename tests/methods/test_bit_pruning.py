"""BitPruning maths and quantizer: min-max grids, fractional bitlengths, gradients, bounds, granularity, rounding."""

from __future__ import annotations

import math

import pytest
import torch
from quant_refs import ref_fractional, ref_minmax

from bb_lightning.core.minmax import minmax_quantize, minmax_quantize_reference
from bb_lightning.methods.bit_pruning.kernels import fractional_quantize
from bb_lightning.errors import BBConfigError
from bb_lightning.methods.bit_pruning import BitPruningConfig, BitPruningQuantizer


def _t(v: float) -> torch.Tensor:
    return torch.tensor(float(v))


@pytest.fixture
def data() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2000)


# ----- kernels -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 12])
def test_integer_grid_matches_float64_reference(data, bits):
    lo, hi = -1.7, 2.3
    out = minmax_quantize(data, _t(lo), _t(hi), _t(bits))
    diff = (out.double() - ref_minmax(data, lo, hi, bits)).abs()
    # float32 vs float64 may round a value within ~1e-7 of a tie to the other neighbour: one step, rarely
    step = (hi - lo) / (2**bits - 1)
    off = diff > 1e-5
    assert int(off.sum()) <= 2 and bool((diff[off] - step).abs().max() < 1e-5 if off.any() else True)
    # 2^b levels at most, all inside [lo, hi], lo and hi representable
    assert out.unique().numel() <= 2**bits
    assert out.min() >= lo - 1e-6 and out.max() <= hi + 1e-6
    grid = minmax_quantize(torch.tensor([lo, hi]), _t(lo), _t(hi), _t(bits))
    torch.testing.assert_close(grid, torch.tensor([lo, hi]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [1.0, 2.0, 2.25, 3.5, 4.999, 7.0, 7.6])
def test_fractional_matches_float64_reference(data, n):
    out = fractional_quantize(data, _t(n), _t(-2.0), _t(2.5))
    torch.testing.assert_close(out.double(), ref_fractional(data, -2.0, 2.5, n), rtol=0, atol=1e-5)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 8])
def test_fractional_equals_integer_quantizer_at_integers(data, k):
    lo, hi = _t(-1.3), _t(1.9)
    assert torch.equal(fractional_quantize(data, _t(k), lo, hi), minmax_quantize(data, lo, hi, _t(k)))
    assert torch.equal(minmax_quantize_reference(data, lo, hi, _t(k)), minmax_quantize(data, lo, hi, _t(k)))


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_fractional_is_continuous_across_integers(data, k):
    lo, hi = _t(-2.0), _t(2.0)
    at = minmax_quantize(data, lo, hi, _t(k))
    for eps in (1e-3, 1e-5):
        left = fractional_quantize(data, torch.tensor(k - eps, dtype=torch.float32), lo, hi)
        right = fractional_quantize(data, torch.tensor(k + eps, dtype=torch.float32), lo, hi)
        # the jump across k shrinks with eps: |Q(k +- eps) - Q(k)| <= eps * max|Q_{f+1} - Q_f| <= eps * step
        step = 4.0 / (2**(k - 1) - 1)
        assert (left - at).abs().max() <= eps * step + 1e-6
        assert (right - at).abs().max() <= eps * step + 1e-6


def test_mse_falls_with_bitlength(data):
    lo, hi = data.min(), data.max()
    mse = [float((fractional_quantize(data, _t(n), lo, hi) - data).square().mean()) for n in (2, 2.5, 3, 3.5, 4, 6, 8)]
    assert all(a > b for a, b in zip(mse, mse[1:])), mse


@pytest.mark.parametrize("n", [2.3, 3.5, 5.75])
def test_bitlength_gradient_matches_finite_differences(n):
    torch.manual_seed(1)
    x = torch.randn(500)
    w = torch.randn(500)  # a random linear loss sum(w * Q_n(x))
    lo, hi = _t(-1.5), _t(1.5)
    nt = torch.tensor(n, requires_grad=True)
    (w * fractional_quantize(x, nt, lo, hi)).sum().backward()
    h = 1e-3  # Q_n is linear in n between integers, so central differences are exact up to float64 rounding
    loss = lambda v: float((w.double() * ref_fractional(x, -1.5, 1.5, v)).sum())  # noqa: E731
    fd = (loss(n + h) - loss(n - h)) / (2 * h)
    assert math.isclose(float(nt.grad), fd, rel_tol=1e-4, abs_tol=1e-4)
    # and equals the projection on the next-bit residual, spec 1.4
    f = math.floor(n)
    expect = float((w.double() * (ref_minmax(x, -1.5, 1.5, f + 1) - ref_minmax(x, -1.5, 1.5, f))).sum())
    assert math.isclose(float(nt.grad), expect, rel_tol=1e-4, abs_tol=1e-4)


def test_input_gradient_is_straight_through_inside_range():
    x = torch.tensor([-3.0, -0.5, 0.1, 0.9, 3.0], requires_grad=True)
    fractional_quantize(x, _t(3.4), _t(-1.0), _t(1.0)).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_constant_tensor_is_well_defined():
    x = torch.full((10,), 0.7)
    out = fractional_quantize(x, _t(3.5), _t(0.7), _t(0.7))
    assert torch.isfinite(out).all() and torch.allclose(out, x)


# ----- quantizer ---------------------------------------------------------------------------------------------
def test_per_channel_bitlengths_broadcast_like_separate_tensors():
    torch.manual_seed(2)
    w = torch.randn(6, 3, 3, 3) * torch.linspace(0.1, 2.0, 6).view(-1, 1, 1, 1)
    q = BitPruningQuantizer(BitPruningConfig(weight_granularity="channel"), "weight", 6)
    q.init_range(w)
    with torch.no_grad():
        q.bitlength.copy_(torch.tensor([2.0, 2.5, 3.25, 4.0, 6.9, 8.0]))
    out = q(w)
    for c in range(6):
        lo, hi = float(w[c].min()), float(w[c].max())
        ref = ref_fractional(w[c], lo, hi, float(q.bitlength[c].detach()))
        torch.testing.assert_close(out[c].double(), ref, rtol=0, atol=1e-5)
    # each channel's bitlength receives the gradient of its own channel only
    g = torch.zeros_like(w)
    g[3] = torch.randn(3, 3, 3)
    q.bitlength.grad = None
    (q(w) * g).sum().backward()
    assert q.bitlength.grad.nonzero().view(-1).tolist() == [3]


def test_group_granularity_shares_bitlengths():
    q = BitPruningQuantizer(BitPruningConfig(weight_granularity="group", group_size=4), "weight", 10)
    assert q.bitlength.shape == (3,)
    with torch.no_grad():
        q.bitlength.copy_(torch.tensor([3.0, 5.0, 7.0]))
    assert q.expected_bits().tolist() == [3.0] * 4 + [5.0] * 4 + [7.0] * 2
    assert q.channel_bits().tolist() == [3] * 4 + [5] * 4 + [7] * 2
    assert q.hard_bits() == 7


def test_bounds_hold_under_large_steps():
    cfg = BitPruningConfig(min_bits=2, max_bits=6, init_bits=4)
    q = BitPruningQuantizer(cfg, "weight", 4)
    w = torch.randn(4, 8)
    q.init_range(w)
    opt = torch.optim.SGD(q.parameters(), lr=100.0)
    for sign in (1.0, -1.0, 1.0):
        opt.zero_grad()
        (sign * q(w).sum() * 1e3 + sign * q.expected_bits().sum() * 1e3).backward()
        opt.step()
        q.constrain_()
        assert 2.0 <= float(q.bitlength) <= 6.0
        assert 2.0 <= float(q.expected_bits()) <= 6.0
    # the straight-through clamp keeps a gradient at the bound (torch.clamp would give 0 there)
    with torch.no_grad():
        q.bitlength.fill_(6.0)
    q.bitlength.grad = None
    q.expected_bits().backward()
    assert float(q.bitlength.grad) == 1.0


@pytest.mark.parametrize(
    "rule,eps,expect",
    [("ceil", 0.05, [3, 3, 4, 5, 8]), ("round", 0.05, [3, 3, 3, 5, 8]), ("floor", 0.05, [3, 2, 3, 4, 7])],
)
def test_rounding_rules(rule, eps, expect):
    cfg = BitPruningConfig(weight_granularity="channel", rounding=rule, rounding_eps=eps)
    q = BitPruningQuantizer(cfg, "weight", 5)
    with torch.no_grad():
        q.bitlength.copy_(torch.tensor([3.0, 2.97, 3.4, 4.6, 7.999]))
    assert q.channel_bits().tolist() == expect


def test_eval_and_frozen_use_the_rounded_integer_grid():
    torch.manual_seed(3)
    w = torch.randn(4, 16)
    q = BitPruningQuantizer(BitPruningConfig(init_bits=3.4), "weight", 4)
    q.init_range(w)
    lo, hi = w.min(), w.max()
    q.eval()
    assert torch.equal(q(w), minmax_quantize(w, lo, hi, _t(4)))  # ceil(3.4 - 0.05)
    q.train()
    q.freeze()
    assert not q.bitlength.requires_grad and q.parameter_groups() == {"bits": [q.bitlength]}
    assert torch.equal(q(w), minmax_quantize(w, lo, hi, _t(4)))


def test_input_ranges_are_ema_in_training_and_fixed_in_eval():
    q = BitPruningQuantizer(BitPruningConfig(ema_momentum=0.5), "input")
    q.eval()
    x0 = torch.rand(100)
    assert torch.equal(q(x0), x0)  # uncalibrated in eval: pass through
    q.train()
    q(torch.tensor([0.0, 4.0]))  # first batch initialises (no EMA step on it)
    assert (float(q.lo), float(q.hi)) == (0.0, 4.0)
    q(torch.tensor([-2.0, 2.0]))  # EMA with momentum 0.5 (the batch first updates, then quantizes)
    assert (float(q.lo), float(q.hi)) == (-1.0, 3.0)
    q.eval()
    q(torch.tensor([-100.0, 100.0]))
    assert (float(q.lo), float(q.hi)) == (-1.0, 3.0)


def test_quantizer_keeps_float32_maths_under_autocast():
    q = BitPruningQuantizer(BitPruningConfig(init_bits=7.5), "input")
    x = torch.randn(4, 8)
    ref = q(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=2e-2)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (dict(min_bits=0), "min_bits"),
        (dict(max_bits=17), "max_bits"),
        (dict(min_bits=5, max_bits=4), "min_bits"),
        (dict(init_bits=9), "init_bits"),
        (dict(weight_granularity="row"), "weight_granularity"),
        (dict(group_size=0), "group_size"),
        (dict(rounding="up"), "rounding"),
        (dict(rounding_eps=0.7), "rounding_eps"),
        (dict(ema_momentum=1.0), "ema_momentum"),
        (dict(init_bits="8"), "init_bits"),
    ],
)
def test_config_errors_name_the_argument(kwargs, key):
    with pytest.raises(BBConfigError, match=key):
        BitPruningConfig(**kwargs)
