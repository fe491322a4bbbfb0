"""Hard-concrete gates (spec 2.1-2.3, pitfall 5).

References are derived here from the sampling formula of spec 2.2:
``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``, ``z = clamp(s (zeta - gamma) + gamma, 0, 1)`` with
``beta = 2/3``, ``gamma = -0.1``, ``zeta = 1.1``. Solving for the clamp edges gives, with ``c = beta * ln 11``:
``P(z > 0) = sigmoid(log_alpha + c)``, ``P(z = 1) = sigmoid(log_alpha - c)``, ``P(z = 0) = sigmoid(-log_alpha - c)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bb_lightning.methods.bayesian_bits import hard_concrete as hc

BETA, LOW, HIGH = 2.0 / 3.0, -0.1, 1.1
C = BETA * math.log(-HIGH / LOW)  # beta * ln 11 = 1.59860...


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def ref_sample(log_alpha: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    la, u = log_alpha.double(), noise.double()
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + la) / BETA)
    return (s * (HIGH - LOW) + LOW).clamp(0.0, 1.0)


def test_constants():
    assert hc.BETA == pytest.approx(2 / 3)
    assert hc.LOW == pytest.approx(-0.1)
    assert hc.HIGH == pytest.approx(1.1)
    assert C == pytest.approx(1.59860, abs=1e-5)


@pytest.mark.parametrize("la", [-8.0, -6.0, -2.0, -0.936, -0.9, 0.0, 1.3, 6.0, 8.0])
def test_prob_nonzero_closed_form(la):
    got = float(hc.prob_nonzero(torch.tensor(la, dtype=torch.float64)))
    assert got == pytest.approx(sig(la + C), rel=1e-9)


# spec 2.3 reference table: log_alpha -> (P(z>0) as printed, eval gate)
SPEC_TABLE = [(6.0, 0.9995, 1.0), (0.0, 0.832, 1.0), (-0.9, 0.668, 1.0), (-0.936, 0.660, 0.0), (-2.0, 0.401, 0.0),
              (-6.0, 0.012, 0.0)]


@pytest.mark.parametrize(("la", "p", "gate"), SPEC_TABLE)
def test_spec_reference_table(la, p, gate):
    digits = len(str(p).split(".")[1])
    got = float(hc.prob_nonzero(torch.tensor(la)))
    assert abs(got - p) <= 0.5 * 10**-digits + 1e-6
    assert float(hc.deterministic(torch.tensor(la))) == gate


def test_eval_threshold_value():
    thr = hc.eval_log_alpha_threshold()
    assert thr == pytest.approx(-0.9353, abs=1e-4)
    # P(z > 0) = 0.66 exactly at the threshold, i.e. P(z = 0) = 0.34
    assert thr == pytest.approx(math.log(0.66 / 0.34) - C, abs=1e-12)
    assert float(hc.prob_nonzero(torch.tensor(thr, dtype=torch.float64))) == pytest.approx(0.66, abs=1e-12)


@pytest.mark.parametrize("t", [0.1, 0.34, 0.5, 0.9])
def test_eval_threshold_for_other_levels(t):
    thr = hc.eval_log_alpha_threshold(t)
    # on iff P(z = 0) = sigmoid(-la - c) < t
    assert sig(-thr - C) == pytest.approx(t, abs=1e-12)
    la = torch.tensor([thr - 1e-3, thr + 1e-3], dtype=torch.float64)
    assert hc.deterministic(la, t).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("t", [0.0, 1.0, -0.2, 1.5])
def test_eval_threshold_rejects_out_of_range(t):
    with pytest.raises(ValueError):
        hc.eval_log_alpha_threshold(t)


def test_deterministic_rule_is_not_sigmoid_half():
    # pitfall 5: at log_alpha = -0.5, sigmoid(log_alpha) < 0.5 but the gate is on (P(z=0) = 0.25 < 0.34)
    la = torch.tensor([-0.5, -0.93, -0.94, -1.5, 0.5])
    assert hc.deterministic(la).tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert hc.deterministic(la).dtype == la.dtype
    assert hc.deterministic(la).shape == la.shape


# ----------------------------------------------------------------------------------------------------------------
# sampling (spec 2.2)
# ----------------------------------------------------------------------------------------------------------------
N_MC = 200_000


def _mc(la: float) -> torch.Tensor:
    torch.manual_seed(1234)
    return hc.sample(torch.full((N_MC,), la))


def _tol(p: float) -> float:
    return 4.5 * math.sqrt(p * (1 - p) / N_MC) + 1e-5


def test_monte_carlo_at_plus_six():
    z = _mc(6.0)
    p1, p0 = float((z == 1).double().mean()), float((z == 0).double().mean())
    assert p1 == pytest.approx(sig(6.0 - C), abs=_tol(sig(6.0 - C)))  # 0.98789
    assert p0 == pytest.approx(sig(-6.0 - C), abs=_tol(sig(-6.0 - C)))  # 0.00050
    # spec 2.2 quotes 98.7 % exactly 1 and 0.05 % exactly 0 (a finite-sample measurement)
    assert abs(p1 - 0.987) < 0.002
    assert abs(p0 - 0.0005) < 0.0002


def test_monte_carlo_at_minus_six():
    z = _mc(-6.0)
    p0 = float((z == 0).double().mean())
    assert p0 == pytest.approx(sig(6.0 - C), abs=_tol(sig(6.0 - C)))
    assert abs(p0 - 0.988) < 0.002  # spec 2.2: 98.8 % exactly 0


@pytest.mark.parametrize("la", [-2.0, -0.9353, 0.0, 1.5])
def test_monte_carlo_prob_nonzero(la):
    z = _mc(la)
    assert float((z >= 0).all()) and float((z <= 1).all())
    p = float(hc.prob_nonzero(torch.tensor(la)))
    assert float((z > 0).double().mean()) == pytest.approx(p, abs=_tol(p))
    assert float((z == 0).double().mean()) == pytest.approx(1 - p, abs=_tol(p))
    p1 = sig(la - C)
    assert float((z == 1).double().mean()) == pytest.approx(p1, abs=_tol(p1))


def test_sample_shape_and_one_draw_per_element():
    torch.manual_seed(0)
    la = torch.zeros(3, 4)
    z = hc.sample(la)
    assert z.shape == (3, 4)
    assert torch.unique(z).numel() > 1  # independent draws per element


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**20), scale=st.floats(0.1, 8.0))
def test_sample_matches_formula_on_given_noise(seed, scale):
    g = torch.Generator().manual_seed(seed)
    la = (torch.rand(64, generator=g, dtype=torch.float64) * 2 - 1) * scale
    noise = torch.rand(64, generator=g, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    z = hc.sample(la, noise)
    torch.testing.assert_close(z, ref_sample(la, noise), rtol=0, atol=1e-12)
    # float32 as used in training
    z32 = hc.sample(la.float(), noise.float())
    torch.testing.assert_close(z32.double(), ref_sample(la.float(), noise.float()), rtol=0, atol=1e-6)


def test_sample_gradient_finite_differences():
    g = torch.Generator().manual_seed(7)
    la = ((torch.rand(400, generator=g, dtype=torch.float64) * 2 - 1) * 4).requires_grad_()
    noise = torch.rand(400, generator=g, dtype=torch.float64).clamp(1e-4, 1 - 1e-4)
    z = hc.sample(la, noise)
    z.sum().backward()
    grad = la.grad
    h = 1e-6
    with torch.no_grad():
        fd = (hc.sample(la + h, noise) - hc.sample(la - h, noise)) / (2 * h)
    zd = z.detach()
    frac = (zd > 1e-4) & (zd < 1 - 1e-4)
    clamped = (zd == 0) | (zd == 1)
    assert frac.sum() > 50 and clamped.sum() > 50
    torch.testing.assert_close(grad[frac], fd[frac], rtol=1e-5, atol=1e-8)
    # analytic: dz/dla = (zeta - gamma) s (1 - s) / beta
    s = torch.sigmoid((torch.log(noise) - torch.log1p(-noise) + la.detach()) / BETA)
    torch.testing.assert_close(grad[frac], ((HIGH - LOW) * s * (1 - s) / BETA)[frac], rtol=1e-9, atol=1e-12)
    # exact 0 and 1 carry no gradient (spec 2.2)
    assert torch.all(grad[clamped] == 0)
    assert torch.all(fd[clamped] == 0)


def test_sample_gradient_flows_only_to_log_alpha():
    la = torch.zeros(5, requires_grad=True)
    noise = torch.full((5,), 0.5, requires_grad=True)
    z = hc.sample(la, noise)
    assert torch.allclose(z, torch.full((5,), 0.5))
    z.sum().backward()
    # at s = 1/2: dz/dla = 1.2 * 0.25 / (2/3) = 0.45
    torch.testing.assert_close(la.grad, torch.full((5,), 0.45))
