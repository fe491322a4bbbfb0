"""BitPruning with learned ranges (``learn_ranges=True``, spec R3): range gradients, quantizer state, and that learning
the range does what it is for (a lower quantization error than min-max at 2 bits)."""

from __future__ import annotations

import pytest
import torch

from bb_lightning.core.minmax import minmax_quantize
from bb_lightning.methods.bit_pruning import BitPruningConfig, BitPruningQuantizer
from bb_lightning.methods.bit_pruning.kernels import fractional_quantize


def _ste_reference(x: torch.Tensor, n: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``(1 - a) Q_f + a Q_{f+1}`` written with plain autograd ops in float64; rounding is straight-through
    (``round(v)`` replaced by ``v + (round(v) - v).detach()``), the clip is ``max(min(x, hi), lo)``."""
    f = torch.floor(n.detach())
    a = n - f
    xc = torch.maximum(torch.minimum(x, hi), lo)

    def level(bits: torch.Tensor) -> torch.Tensor:
        s = (hi - lo) / (2.0**bits - 1.0)
        v = (xc - lo) / s
        return lo + s * (v + (torch.round(v) - v).detach())

    return (1 - a) * level(f) + a * level(f + 1)


@pytest.mark.parametrize("n", [2.0, 2.6, 3.0, 5.3])
@pytest.mark.parametrize("shape", [(), (4, 1, 1, 1)], ids=["tensor", "channel"])
def test_range_gradients_match_a_float64_straight_through_reference(n, shape):
    torch.manual_seed(0)
    x = (1.3 * torch.randn(4, 3, 5, 5)).requires_grad_()  # some elements fall outside [lo, hi] on both sides
    nn_ = torch.full(shape, n, requires_grad=True)
    lo = (-1.2 + 0.05 * torch.randn(shape)).requires_grad_()
    hi = (1.1 + 0.05 * torch.randn(shape)).requires_grad_()
    g = torch.randn_like(x)
    out = fractional_quantize(x, nn_, lo, hi, learn_range=True)
    (out * g).sum().backward()
    ref_in = [t.detach().double().requires_grad_() for t in (x, nn_, lo, hi)]
    ref = _ste_reference(*ref_in)
    (ref * g.double()).sum().backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=0, atol=1e-5)
    for mine, theirs, name in zip((x, nn_, lo, hi), ref_in, ("x", "n", "lo", "hi")):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=1e-4, atol=1e-4, msg=name)
    assert float(hi.grad.abs().sum()) > 0 and float(lo.grad.abs().sum()) > 0


def test_statistics_get_no_range_gradient_by_default():
    lo, hi = torch.tensor(-1.0, requires_grad=True), torch.tensor(1.0, requires_grad=True)
    fractional_quantize(torch.randn(50), torch.tensor(2.5, requires_grad=True), lo, hi).sum().backward()
    assert lo.grad is None and hi.grad is None


def test_learned_ranges_are_parameters_in_their_own_group():
    q = BitPruningQuantizer(BitPruningConfig(learn_ranges=True), "weight", 4)
    assert isinstance(q.lo, torch.nn.Parameter) and isinstance(q.hi, torch.nn.Parameter)
    assert q.parameter_groups() == {"bits": [q.bitlength], "ranges": [q.lo, q.hi]}
    assert set(q.state_dict()) >= {"lo", "hi", "bitlength"}
    default = BitPruningQuantizer(BitPruningConfig(), "weight", 4)
    assert "lo" in dict(default.named_buffers()) and "ranges" not in default.parameter_groups()


def test_learned_weight_range_starts_at_min_max_and_is_not_reset_by_new_weights():
    torch.manual_seed(1)
    w = torch.randn(4, 16)
    q = BitPruningQuantizer(BitPruningConfig(init_bits=3.0, learn_ranges=True), "weight", 4)
    q.train()
    q(w)
    assert (float(q.lo.detach()), float(q.hi.detach())) == (float(w.min()), float(w.max()))
    with torch.no_grad():
        q.hi.fill_(1.0)
    q.observe_weight(3 * w)  # export refreshes min-max statistics only
    q(3 * w)
    assert q.hi.item() == 1.0
    q.eval()  # evaluation uses the learned range on the integer grid
    assert torch.equal(q(w), minmax_quantize(w, q.lo.detach(), q.hi.detach(), torch.tensor(3.0)))


def test_unsigned_input_keeps_its_lower_end():
    q = BitPruningQuantizer(BitPruningConfig(init_bits=2.0, learn_ranges=True), "input")
    q.train()
    x = torch.rand(64) * 3
    x[0] = 0.0
    q(x)
    q(x).pow(2).sum().backward()
    assert float(q.lo.detach()) == 0.0 and float(q.lo.grad) == 0.0  # in the graph (DDP), but never moved
    assert q.hi.grad is not None and float(q.hi.grad) != 0.0


def test_frozen_training_uses_the_integer_grid_and_still_learns_the_range():
    torch.manual_seed(2)
    w = torch.randn(3, 10)
    q = BitPruningQuantizer(BitPruningConfig(init_bits=2.7, learn_ranges=True), "weight", 3)
    q.train()
    q(w)
    q.freeze()
    out = q(w)
    assert torch.equal(out.detach(), minmax_quantize(w, q.lo.detach(), q.hi.detach(), torch.tensor(3.0)))
    (out - w).pow(2).sum().backward()
    assert q.bitlength.grad is None and float(q.hi.grad) != 0.0 and float(q.lo.grad) != 0.0


def test_constrain_keeps_a_learned_range_from_inverting():
    q = BitPruningQuantizer(BitPruningConfig(learn_ranges=True), "weight", 2)
    q.init_range(torch.randn(2, 5))
    with torch.no_grad():
        q.hi.fill_(-5.0)
    q.constrain_()
    assert q.hi.item() > q.lo.item()


@pytest.mark.parametrize("bits", [2.0, 3.0])
def test_learning_the_range_lowers_the_quantization_error_below_min_max(bits):
    """What the option is for (spec R3): at 2-3 bits, min-max spends levels on the tails of a Gaussian."""
    torch.manual_seed(0)
    w = torch.randn(64, 64)
    q = BitPruningQuantizer(BitPruningConfig(init_bits=bits, min_bits=bits, max_bits=bits, learn_ranges=True),
                            "weight", 64)
    q.train()
    q.freeze()  # integer grid, range still learned
    minmax_mse = float((q(w) - w).pow(2).mean())
    opt = torch.optim.Adam([q.lo, q.hi], lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        (q(w) - w).pow(2).mean().backward()
        opt.step()
        q.constrain_()
    learned_mse = float((q(w) - w).pow(2).mean())
    assert learned_mse < 0.6 * minmax_mse
    assert q.hi.item() < float(w.max()) and q.lo.item() > float(w.min())  # the tails are clipped


def test_a_clipped_non_finite_input_still_shows_in_the_range_gradients():
    """A learned range clips inf to hi (finite output, finite input gradient); the range gradients turn NaN so that
    `NonFiniteGuard`, which watches the quantizer gradients, stops the run."""
    x = torch.randn(3, 8)
    x[1, 2] = float("inf")
    lo, hi = torch.tensor(-1.0, requires_grad=True), torch.tensor(1.0, requires_grad=True)
    out = fractional_quantize(x, torch.tensor(3.5), lo, hi, learn_range=True)
    assert bool(torch.isfinite(out).all())
    out.sum().backward()
    assert bool(torch.isnan(hi.grad)) and bool(torch.isnan(lo.grad))
