"""BitPruning with ``weight_grid="symmetric"``: the weights on the restricted symmetric grid ``[-u, u]`` with 0 as a
level (the grid of Bayesian Bits and the uniform baselines), against a float64 reference, the core quantizer and
the export."""

from __future__ import annotations

import pytest
import torch

from bb_lightning import BBConfigError
from bb_lightning.core.fake_quant import fake_quantize
from bb_lightning.methods.bit_pruning import BitPruningConfig, BitPruningQuantizer
from bb_lightning.methods.bit_pruning.kernels import symmetric_fractional_quantize


def _reference(x: torch.Tensor, n: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``(1 - a) Q_f + a Q_{f+1}`` with plain float64 autograd ops, straight-through rounding, ``Q_b(x) = s_b k`` with
    ``k = round(clip(x, -u', u') / s_b)``, ``s_b = 2u / (2^b - 1)``, ``u' = (1 - 1e-7) u``, so that
    ``|k| <= 2^(b-1) - 1``."""
    f = torch.floor(n.detach())
    a = n - f
    hi = u * (1 - 1e-7)
    xc = torch.maximum(torch.minimum(x, hi), -hi)

    def level(bits: torch.Tensor) -> torch.Tensor:
        s = 2 * u / (2.0**bits - 1.0)
        v = xc / s
        return s * (v + (torch.round(v) - v).detach())

    return (1 - a) * level(f) + a * level(f + 1)


@pytest.mark.parametrize("n", [2.0, 2.6, 3.0, 5.3])
def test_gradients_match_a_float64_straight_through_reference(n):
    torch.manual_seed(0)
    x = (0.8 * torch.randn(6, 3, 5, 5)).requires_grad_()  # some elements beyond u on both sides
    nn_ = torch.tensor(n, requires_grad=True)
    u = torch.tensor(1.1, requires_grad=True)
    g = torch.randn_like(x)
    out = symmetric_fractional_quantize(x, nn_, u, learn_range=True)
    (out * g).sum().backward()
    ref_in = [t.detach().double().requires_grad_() for t in (x, nn_, u)]
    ref = _reference(*ref_in)
    (ref * g.double()).sum().backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=0, atol=1e-5)
    for mine, theirs, name in zip((x, nn_, u), ref_in, ("x", "n", "u")):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=1e-4, atol=1e-4, msg=name)
    assert float(nn_.grad) != 0.0 and float(u.grad) != 0.0


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_integer_bitlengths_give_the_core_grid_bit_for_bit(bits):
    torch.manual_seed(bits)
    x, u = torch.randn(4096), torch.tensor(1.7)
    out = symmetric_fractional_quantize(x, torch.tensor(float(bits)), u)
    assert torch.equal(out, fake_quantize(x, u, bits, True))
    assert bool((out == 0).any())  # 0 is a level (the min-max grid has none for a symmetric range)
    assert out.unique().numel() <= 2**bits - 1


@pytest.mark.parametrize("bits", [2, 4, 7])
def test_one_grid_at_integer_widths_gives_the_blend_and_its_x_and_u_gradients(bits):
    """``blend=False`` (evaluation and the fixed-width tail) computes one grid instead of two, with the same result."""
    torch.manual_seed(bits)
    x0, g = 1.2 * torch.randn(500), torch.randn(500)
    results = []
    for blend in (True, False):
        x, u = x0.clone().requires_grad_(), torch.tensor(0.9, requires_grad=True)
        out = symmetric_fractional_quantize(x, torch.tensor(float(bits)), u, learn_range=True, blend=blend)
        (out * g).sum().backward()
        results.append((out.detach(), x.grad, u.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_learned_symmetric_range_is_one_parameter_starting_at_max_abs():
    torch.manual_seed(1)
    w = torch.randn(4, 16)
    q = BitPruningQuantizer(BitPruningConfig(init_bits=3.0, learn_ranges=True, weight_grid="symmetric"), "weight", 4)
    assert q.grid == "symmetric" and q.parameter_groups() == {"bits": [q.bitlength], "ranges": [q.hi]}
    assert "lo" in dict(q.named_buffers())  # -u, kept for the state dict; not a parameter (DDP sees no unused one)
    q.train()
    q(w)
    assert q.range() == (-float(w.abs().max()), float(w.abs().max()))
    with torch.no_grad():
        q.hi.fill_(1.0)
    q.observe_weight(3 * w)  # a learned range is not reset by new weights
    q.eval()
    assert q.range() == (-1.0, 1.0) and torch.equal(q(w), fake_quantize(w, torch.tensor(1.0), 3, True))


def test_statistics_follow_the_live_weight_and_get_no_gradient():
    q = BitPruningQuantizer(BitPruningConfig(init_bits=2.5, weight_grid="symmetric"), "weight", 2)
    q.train()
    w = torch.randn(2, 8, requires_grad=True)
    q(w).sum().backward()
    q(2 * w.detach())
    assert float(q.hi) == pytest.approx(2 * float(w.detach().abs().max())) and float(q.lo) == -float(q.hi)
    assert [n for n, _ in q.named_parameters()] == ["bitlength"] and float(q.bitlength.grad) != 0.0


def test_inputs_keep_the_min_max_grid():
    q = BitPruningQuantizer(BitPruningConfig(weight_grid="symmetric", learn_ranges=True), "input")
    assert q.grid == "minmax" and not q.symmetric


@pytest.mark.parametrize(
    "kwargs, key",
    [({"weight_granularity": "channel"}, "weight_granularity"), ({"min_bits": 1.0}, "min_bits"),
     ({"weight_grid": "affine"}, "weight_grid")],
)
def test_invalid_combinations_name_the_argument(kwargs, key):
    with pytest.raises(BBConfigError, match=key):
        BitPruningConfig(**{"weight_grid": "symmetric", **kwargs})
