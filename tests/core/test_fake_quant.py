"""Fake quantization (spec sections 1.2-1.6, 1.8, pitfalls 2 and 6).

Every expected value is computed here, independently of the package, from the spec's formulas in float64:
clip to ``[lo', hi']`` with ``hi' = (1 - 1e-7) u``, steps ``s_b = R / (2^b - 1)``, and the nested residual
decomposition of spec 1.4 (``x_2, e_4, e_8, e_16, e_32`` with residuals of the *ungated* partial sums).
"""

from __future__ import annotations

import math

import pytest
import torch
from quant_refs import CHAIN, SHRINK, assert_quant_close, ref_clip, ref_level, ref_nested, ref_step
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bb_lightning.core.fake_quant import fake_quantize, nested_quantize, scale

HYPO = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------------------------
# independent float64 references (spec 1.2-1.4)
# ----------------------------------------------------------------------------------------------------------------
def convex_weights(gates) -> list[float]:
    """``w_l = g_l - g_{l+1}`` with ``g`` the cumulative gate products (``g_0 = 1``, ``g_{K+1} = 0``)."""
    g = [1.0]
    for z in gates:
        g.append(g[-1] * float(z))
    g.append(0.0)
    return [g[i] - g[i + 1] for i in range(len(gates) + 1)]


def ref_clip_du(x: torch.Tensor, u: float, signed: bool) -> torch.Tensor:
    """``d x_c / d u``: ``(1 - 1e-7)`` above the range, ``-(1 - 1e-7)`` below it (signed), 0 inside."""
    x = x.double()
    hi = u * SHRINK
    d = torch.where(x > hi, torch.full_like(x, SHRINK), torch.zeros_like(x))
    if signed:
        d = torch.where(x < -hi, torch.full_like(x, -SHRINK), d)
    return d


def ref_inside(x: torch.Tensor, u: float, signed: bool) -> torch.Tensor:
    x = x.double()
    hi = u * SHRINK
    lo = -hi if signed else 0.0
    return (x > lo) & (x < hi)


def mismatch_step(u, signed, gates, bits=CHAIN) -> float:
    """Largest change of the output when float32 rounds one level's near-tie the other way: max_l w_l s_l."""
    return max(w * (ref_step(u, b, signed) if b < 32 else 0.0) for w, b in zip(convex_weights(gates), bits))


def rand_x(n, u, signed, seed, spread=1.4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * spread * u
    if not signed:
        x = x + 0.3 * u  # mostly positive, some below 0, some above u
    return x.to(dtype)


# ----------------------------------------------------------------------------------------------------------------
# 1. scales and grids (spec 1.3, table 1.5)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8, 16, 32])
def test_scale_matches_spec_formula(bits, signed):
    u = 0.731
    got = float(scale(torch.tensor(u, dtype=torch.float64), bits, signed))
    expected = (2 * u if signed else u) / (2**bits - 1)
    assert got == pytest.approx(expected, rel=1e-12)


def test_scales_are_nested_by_two_to_the_b_plus_one():
    # s_4 = s_2 / 5, s_8 = s_4 / 17, s_16 = s_8 / 257, s_32 = s_16 / 65537 (spec 1.3)
    u = torch.tensor(1.3, dtype=torch.float64)
    for signed in (True, False):
        s = [float(scale(u, b, signed)) for b in CHAIN]
        assert s[0] == pytest.approx((2.6 if signed else 1.3) / 3, rel=1e-12)
        for (b, lo), hi in zip(zip(CHAIN, s), s[1:]):
            assert lo / hi == pytest.approx(2**b + 1, rel=1e-9)


GRID_TABLE = [  # spec table 1.5: (signed, bits, min code, max code, number of levels)
    (True, 2, -1, 1, 3),
    (True, 4, -7, 7, 15),
    (True, 8, -127, 127, 255),
    (True, 16, -32767, 32767, 65535),
    (False, 2, 0, 3, 4),
    (False, 4, 0, 15, 16),
    (False, 8, 0, 255, 256),
    (False, 16, 0, 65535, 65536),
]


@pytest.mark.parametrize("path", ["fast", "nested"])
@pytest.mark.parametrize(("signed", "bits", "kmin", "kmax", "nlevels"), GRID_TABLE)
def test_grid_codes_and_error_bound(signed, bits, kmin, kmax, nlevels, path):
    u_f = torch.tensor(0.8137)
    u = float(u_f)
    lo = -1.2 * u if signed else -0.2 * u
    x = torch.linspace(lo, 1.2 * u, 400_001, dtype=torch.float64).float()
    if path == "fast":
        out = fake_quantize(x, u_f, bits, signed)
    else:  # general autograd function: a single level whose weight requires grad
        out = nested_quantize(x, u_f, torch.ones(1, requires_grad=True), (bits,), signed)
    s = ref_step(u, bits, signed)
    q = out.detach().double() / s
    codes = torch.round(q)
    # every output is on the grid (integer code), up to float32 round-off of the value
    assert float((q - codes).abs().max()) < 1e-2
    uniq = torch.unique(codes.long())
    assert int(uniq.min()) == kmin
    assert int(uniq.max()) == kmax
    assert uniq.numel() == nlevels
    # max error inside the clip range is at most s/2
    xd = x.double()
    inside = (xd >= (-u if signed else 0.0)) & (xd <= u * SHRINK)
    err = (out.detach().double() - xd)[inside].abs().max()
    assert float(err) <= s / 2 + 4e-7 * u
    # outside the range: clipped to the extreme codes
    assert torch.all(codes[xd > u] == kmax)
    assert torch.all(codes[xd < (-u if signed else 0.0)] == kmin)


@pytest.mark.parametrize("signed", [True, False])
def test_restricted_symmetric_extremes_and_zero_on_grid(signed):
    u = torch.tensor(2.5)
    for bits in (2, 4, 8):
        out = fake_quantize(torch.tensor([-100.0, 0.0, 100.0]), u, bits, signed)
        top = 2.5 * (2**bits - 2) / (2**bits - 1) if signed else 2.5
        assert float(out[1]) == 0.0
        assert float(out[2]) == pytest.approx(top, rel=1e-6)
        assert float(out[0]) == pytest.approx(-top if signed else 0.0, abs=1e-6)


@pytest.mark.parametrize("signed", [True, False])
def test_float_level_is_clipped_identity(signed):
    u = torch.tensor(1.7)
    x = rand_x(1000, 1.7, signed, seed=3)
    out = fake_quantize(x, u, 32, signed)
    hi = torch.tensor(1.7) * torch.tensor(SHRINK, dtype=torch.float32)
    expected = x.clamp(-float(hi) if signed else 0.0, float(hi))
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-7)


def test_doctest_example_values():
    out = fake_quantize(torch.tensor([0.2, 0.9, 2.0]), torch.tensor(1.0), bits=2, signed=False)
    torch.testing.assert_close(out, torch.tensor([1 / 3, 1.0, 1.0]), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# 2. nested residual decomposition (spec 1.4, pitfall 2)
# ----------------------------------------------------------------------------------------------------------------
def test_residual_sums_equal_direct_quantization_reference():
    # sanity of the reference itself: x_2 + e_4 + ... + e_b == Q_b(x_c) (the nested grid identity of spec 1.3)
    x = rand_x(5000, 1.1, True, seed=1, dtype=torch.float64)
    for signed in (True, False):
        for k in range(1, 4):
            gates = [1.0] * k + [0.0] * (4 - k)
            torch.testing.assert_close(
                ref_nested(x, 1.1, signed, gates), ref_level(x, 1.1, CHAIN[k], signed), rtol=0, atol=1e-12
            )


@HYPO
@given(
    seed=st.integers(0, 2**20),
    signed=st.booleans(),
    u=st.floats(0.05, 20.0),
    gates=st.lists(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0)), min_size=4, max_size=4),
)
def test_nested_quantize_matches_spec_decomposition_float64(seed, signed, u, gates):
    x = rand_x(300, u, signed, seed, dtype=torch.float64)
    u_t = torch.tensor(u, dtype=torch.float64)
    w = torch.tensor(convex_weights(gates), dtype=torch.float64)
    out = nested_quantize(x, u_t, w, CHAIN, signed)
    ref = ref_nested(x, u, signed, gates)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9 * u)


@HYPO
@given(
    seed=st.integers(0, 2**20),
    signed=st.booleans(),
    gates=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
    kept=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_nested_quantize_float32_with_channel_gate(seed, signed, gates, kept):
    u = 0.9
    x = rand_x(5 * 3 * 2 * 2, u, signed, seed).view(5, 3, 2, 2)
    cg = torch.rand(5, 1, 1, 1, generator=torch.Generator().manual_seed(seed)) * torch.tensor(kept).view(5, 1, 1, 1)
    w = torch.tensor(convex_weights(gates))
    out = nested_quantize(x, torch.tensor(u), w, CHAIN, signed, channel_gate=cg)
    ref = ref_nested(x, u, signed, gates, channel_gate=cg)
    assert_quant_close(out, ref, u, mismatch_step(u, signed, gates), max_frac=0.05)
    # pruned channels are exactly zero
    for c, k in enumerate(kept):
        if not k:
            assert torch.count_nonzero(out[c]) == 0


@pytest.mark.parametrize("signed", [True, False])
def test_fractional_gates_float32_reference(signed):
    u = 1.37
    x = rand_x(4000, u, signed, seed=11)
    for gates in ([0.3, 0.8, 0.55, 0.2], [1.0, 0.4, 0.0, 0.9], [0.7, 1.0, 1.0, 0.0], [0.25, 0.5, 0.75, 1.0]):
        w = torch.tensor(convex_weights(gates))
        out = nested_quantize(x, torch.tensor(u), w, CHAIN, signed)
        assert_quant_close(out, ref_nested(x, u, signed, gates), u, mismatch_step(u, signed, gates))


@pytest.mark.parametrize("signed", [True, False])
def test_all_gates_on_reproduces_clipped_input(signed):
    u = 0.61
    x = rand_x(20000, u, signed, seed=5)
    out = nested_quantize(x, torch.tensor(u), torch.tensor(convex_weights([1, 1, 1, 1])), CHAIN, signed)
    xc = ref_clip(x, float(torch.tensor(u)), signed)
    # "32 bits is float" (spec 1.8): identical to the clipped input up to float32 precision
    assert float((out.double() - xc).abs().max()) <= 2e-7 * u
    # the float64 spec decomposition agrees too (its e_32 residual is below float32 resolution)
    assert float((out.double() - ref_nested(x, u, signed, [1, 1, 1, 1])).abs().max()) <= 2e-7 * u


@pytest.mark.parametrize("signed", [True, False])
def test_zero_lower_gate_makes_higher_gates_irrelevant(signed):
    u = 1.0
    x = rand_x(3000, u, signed, seed=8)
    g = torch.Generator().manual_seed(0)
    for z4 in (0.0, 0.35, 1.0):
        outs = []
        for _ in range(4):
            hi_gates = torch.rand(2, generator=g).tolist()
            gates = [z4, 0.0] + hi_gates
            w = torch.tensor(convex_weights(gates))
            outs.append(nested_quantize(x, torch.tensor(u), w, CHAIN, signed))
        # only x_2 and e_4 can contribute: z4 * Q_4 + (1 - z4) * Q_2
        expected = z4 * ref_level(x, u, 4, signed) + (1 - z4) * ref_level(x, u, 2, signed)
        for out in outs:
            assert_quant_close(out, expected, u, 0.0, max_frac=0.0)


def test_subset_of_levels_is_convex_combination():
    u, signed = 2.0, True
    x = rand_x(2000, u, signed, seed=2)
    w = torch.tensor([0.3, 0.7])
    out = nested_quantize(x, torch.tensor(u), w, (2, 8), signed)
    expected = 0.3 * ref_level(x, u, 2, signed) + 0.7 * ref_level(x, u, 8, signed)
    assert_quant_close(out, expected, u, ref_step(u, 8, signed))


@pytest.mark.parametrize("fast", [True, False])
def test_pruning_mask_zeroes_channels(fast):
    u = 1.0
    x = rand_x(6 * 5, u, True, seed=4).view(6, 5)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0]).view(6, 1)
    w = torch.ones(1, requires_grad=not fast)
    out = nested_quantize(x, torch.tensor(u), w, (4,), True, channel_gate=mask)
    expected = ref_level(x, u, 4, True) * mask.double()
    assert_quant_close(out.detach(), expected, u, 0.0, max_frac=0.0)
    assert torch.count_nonzero(out[mask.view(-1) == 0]) == 0


# ----------------------------------------------------------------------------------------------------------------
# 3. gradients (spec 1.2, 1.6)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signed", [True, False])
def test_gradcheck_gate_weights_and_channel_gate_nested(signed):
    # the output is linear in the convex weights and in the channel gate, so finite differences are exact
    u = torch.tensor(0.9, dtype=torch.float64)
    x = rand_x(4 * 3 * 2 * 2, 0.9, signed, seed=6, dtype=torch.float64).view(4, 3, 2, 2)
    w = torch.tensor(convex_weights([0.6, 0.3, 0.8, 0.5]), dtype=torch.float64, requires_grad=True)
    cg = torch.tensor([0.2, 0.9, 0.5, 1.0], dtype=torch.float64).view(4, 1, 1, 1).requires_grad_()

    def f(w_, cg_):
        return nested_quantize(x, u, w_, CHAIN, signed, channel_gate=cg_)

    assert torch.autograd.gradcheck(f, (w, cg), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("signed", [True, False])
def test_gradcheck_channel_gate_fast_path(signed):
    u = torch.tensor(0.9, dtype=torch.float64)
    x = rand_x(5 * 7, 0.9, signed, seed=7, dtype=torch.float64).view(5, 7)
    cg = torch.tensor([0.2, 0.9, 0.5, 1.0, 0.01], dtype=torch.float64).view(5, 1).requires_grad_()

    def f(cg_):
        return nested_quantize(x, u, torch.ones(1, dtype=torch.float64), (4,), signed, channel_gate=cg_)

    assert torch.autograd.gradcheck(f, (cg,), eps=1e-6, atol=1e-8)


def test_gate_weight_gradient_is_level_value():
    # d out / d w_l = channel_gate * Q_l (spec 1.6: the gate gradient is the quantized residual term)
    u, signed = 1.2, True
    x = rand_x(500, u, signed, seed=9, dtype=torch.float64)
    w = torch.tensor(convex_weights([0.5, 0.5, 0.5, 0.5]), dtype=torch.float64, requires_grad=True)
    G = torch.randn(500, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = nested_quantize(x, torch.tensor(u, dtype=torch.float64), w, CHAIN, signed)
    (out * G).sum().backward()
    expected = torch.stack([(G * ref_level(x, u, b, signed)).sum() for b in CHAIN])
    torch.testing.assert_close(w.grad, expected, rtol=1e-10, atol=1e-10)


def _run_with_grads(x, u, w, levels, signed, cg, G):
    x = x.clone().requires_grad_()
    u = u.clone().requires_grad_()
    cg = None if cg is None else cg.clone().requires_grad_()
    out = nested_quantize(x, u, w, levels, signed, channel_gate=cg)
    (out * G).sum().backward()
    return out.detach(), x.grad, u.grad, (None if cg is None else cg.grad)


def _expected_grads(x, u, weights, levels, signed, cg, G):
    """STE gradients from the spec, in float64: d/dx = cg inside the clip range; d/du = cg ((Q - x_c)/u + dx_c/du)."""
    u = float(u)
    x64, G64 = x.double(), G.double()
    c64 = torch.ones(()) if cg is None else cg.double()
    inner = sum(float(wl) * ref_level(x64, u, b, signed) for wl, b in zip(weights, levels))
    xc = ref_clip(x64, u, signed)
    gx = G64 * c64 * ref_inside(x64, u, signed)
    gu = (G64 * c64 * ((inner - xc) / u + ref_clip_du(x64, u, signed))).sum()
    gc = None if cg is None else (G64 * inner).sum(dim=tuple(range(1, x.dim())), keepdim=True)
    return gx, gu, gc


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("levels_weights", [((4,), (1.0,)), ((8,), (1.0,)), (CHAIN, None)])
def test_gradients_x_and_range_against_closed_form(signed, dtype, levels_weights):
    levels, weights = levels_weights
    if weights is None:
        weights = convex_weights([0.7, 0.4, 0.9, 0.3])
    u = torch.tensor(0.77, dtype=dtype)
    x = rand_x(6 * 40, 0.77, signed, seed=12, dtype=dtype).view(6, 40)
    cg = torch.tensor([0.3, 1.0, 0.6, 0.05, 0.8, 0.45], dtype=dtype).view(6, 1)
    G = torch.randn(6, 40, dtype=dtype, generator=torch.Generator().manual_seed(2))
    w = torch.tensor(weights, dtype=dtype)  # no grad: the single-level cases take the fast path
    out, gx, gu, gc = _run_with_grads(x, u, w, levels, signed, cg, G)
    ex, eu, ec = _expected_grads(x, u, weights, levels, signed, cg, G)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(gx.double(), ex, rtol=0, atol=tol)
    scale_u = float((G.double().abs() * cg.double()).sum())
    assert abs(float(gu) - float(eu)) <= tol * scale_u
    scale_c = float((G.double().abs()).sum(1).max()) * 0.77
    torch.testing.assert_close(gc.double(), ec, rtol=0, atol=tol * scale_c)
    # the x gradient inside the clip range is exactly the channel gate (spec 1.6)
    inside = ref_inside(x, float(u), signed)
    torch.testing.assert_close(
        (gx / G)[inside].double(), cg.expand_as(x)[inside].double(), rtol=1e-6 if dtype == torch.float32 else 1e-12,
        atol=0,
    )
    assert torch.all(gx[~inside] == 0)


@pytest.mark.parametrize("signed", [True, False])
def test_range_gradient_without_channel_gate(signed):
    u = torch.tensor(1.5, dtype=torch.float64)
    x = rand_x(1000, 1.5, signed, seed=13, dtype=torch.float64)
    G = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _, gx, gu, _ = _run_with_grads(x, u, torch.ones(1, dtype=torch.float64), (2,), signed, None, G)
    ex, eu, _ = _expected_grads(x, u, (1.0,), (2,), signed, None, G)
    torch.testing.assert_close(gx, ex, rtol=0, atol=1e-12)
    assert float(gu) == pytest.approx(float(eu), rel=1e-9, abs=1e-9)
    # the clip term alone: for inputs clipped at the top, dQ/du = Q/u (rounding term + clip term)
    xa = torch.tensor([5.0, 7.0], dtype=torch.float64)
    _, _, gua, _ = _run_with_grads(xa, u, torch.ones(1, dtype=torch.float64), (4,), signed, None, torch.ones(2))
    top = ref_level(xa, 1.5, 4, signed)
    assert float(gua) == pytest.approx(float(top.sum()) / 1.5, rel=1e-9)


def away_from_ties(n, u, bits, signed, seed) -> torch.Tensor:
    """Inputs at least 0.1 step away from every rounding tie of the ``bits`` grid (so that float32 paths with a
    different operation order must agree exactly), plus about 10 % clipped values beyond the range."""
    g = torch.Generator().manual_seed(seed)
    s = ref_step(u, bits, signed)
    kmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    kmin = -kmax if signed else 0
    k = torch.randint(kmin, kmax + 1, (n,), generator=g).double()
    d = (torch.rand(n, generator=g, dtype=torch.float64) * 0.3 + 0.1) * torch.where(
        torch.rand(n, generator=g) < 0.5, -1.0, 1.0
    ).double()
    x = (k + d) * s
    out = torch.rand(n, generator=g) < 0.1
    x = torch.where(out, torch.sign(torch.randn(n, generator=g)).double() * u * 1.3, x)
    return x.float()


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (6, 17)])
def test_fast_and_general_path_agree(signed, bits, shape):
    u = torch.tensor(0.93)
    n = math.prod(shape)
    x = away_from_ties(n, float(u), bits, signed, seed=bits).view(shape)
    cshape = (shape[0],) + (1,) * (len(shape) - 1)
    cg = torch.tensor([0.3, 1.0, 0.6, 0.05, 0.8, 0.45]).view(cshape)
    G = torch.randn(shape, generator=torch.Generator().manual_seed(bits))
    fast = _run_with_grads(x, u, torch.ones(1), (bits,), signed, cg, G)
    # weights requiring grad force the general autograd function
    gen = _run_with_grads(x, u, torch.ones(1, requires_grad=True), (bits,), signed, cg, G)
    for a, b in zip(fast, gen):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fast_and_general_path_agree_without_channel_gate():
    u = torch.tensor(1.1)
    x = rand_x(300, 1.1, True, seed=21)
    G = torch.randn(300, generator=torch.Generator().manual_seed(4))
    fast = _run_with_grads(x, u, torch.ones(1), (8,), True, None, G)
    gen = _run_with_grads(x, u, torch.ones(1, requires_grad=True), (8,), True, None, G)
    for a, b in zip(fast[:3], gen[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fast_and_general_path_agree_on_exact_lower_bound_unsigned():
    """Exact zeros are common unsigned inputs (post-ReLU). The two autograd functions must give them the same
    input gradient; the spec (1.2) gives 1 "inside [l', u']" and 0 outside."""
    u = torch.tensor(1.0)
    x = torch.tensor([0.0, 0.25, 0.5, 0.0, 2.0])
    G = torch.ones(5)
    fast = _run_with_grads(x, u, torch.ones(1), (4,), False, None, G)
    gen = _run_with_grads(x, u, torch.ones(1, requires_grad=True), (4,), False, None, G)
    torch.testing.assert_close(fast[1], gen[1], rtol=0, atol=0)


@pytest.mark.parametrize("fast", [True, False])
def test_clipped_inputs_get_no_gradient_and_range_gets_clip_term(fast):
    u = torch.tensor(1.0)
    x = torch.tensor([-3.0, -0.2, 0.3, 4.0])
    w = torch.ones(1, requires_grad=not fast)
    out, gx, gu, _ = _run_with_grads(x, u, w, (4,), True, None, torch.ones(4))
    assert gx.tolist() == [0.0, 1.0, 1.0, 0.0]
    # d/du: clipped entries contribute Q/u = -/+ (7/7.5), inside ones (Q - x)/u
    s = 2.0 / 15
    q = [-7 * s, round(-0.2 / s) * s, round(0.3 / s) * s, 7 * s]
    expected = q[0] + (q[1] + 0.2) + (q[2] - 0.3) + q[3]
    assert float(gu) == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# results a caller holds are never reused as scratch space by later calls
# ----------------------------------------------------------------------------------------------------------------
def test_held_result_is_not_overwritten_by_the_next_call():
    u = torch.tensor(1.0)
    x1 = rand_x(64, 1.0, True, seed=1)
    x2 = rand_x(64, 1.0, True, seed=2)
    a = nested_quantize(x1, u, torch.ones(1), (4,), True)
    a_copy = a.clone()
    b = nested_quantize(x2, u, torch.ones(1), (4,), True)
    assert not torch.equal(a_copy, b)
    torch.testing.assert_close(a, a_copy, rtol=0, atol=0)


def test_results_are_correct_across_calls():
    u = torch.tensor(0.8)
    for seed in range(3):
        x = rand_x(128, 0.8, True, seed=seed)
        out = nested_quantize(x, u, torch.ones(1), (8,), True).clone()
        assert_quant_close(out, ref_level(x, float(u), 8, True), 0.8, ref_step(0.8, 8, True), max_frac=0.02)


def test_host_fast_path_handles_channels_last_gradients():
    """Channels-last activations (ConvNeXt, MambaOut) give non-contiguous gradients to the CPU fast path."""
    from bb_lightning.methods.bayesian_bits.host_path import HostNested

    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last).requires_grad_()
    u = torch.tensor(1.5, requires_grad=True)
    out = HostNested.apply(x, u, None, [1.0], None, None, None, None, [4], True)
    g = torch.randn(2, 4, 5, 3).permute(0, 3, 1, 2)  # non-contiguous in both layouts
    gx, gu = torch.autograd.grad(out, (x, u), g)
    xc = x.detach().contiguous().requires_grad_()
    uc = u.detach().clone().requires_grad_()
    ref = HostNested.apply(xc, uc, None, [1.0], None, None, None, None, [4], True)
    rx, ru = torch.autograd.grad(ref, (xc, uc), g.contiguous())
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gu, ru)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [(2, 4), (4, 8, 16), (8, 16, 32), (2, 4, 8, 16, 32)])
def test_host_nested_matches_general_kernel(signed, bits):
    """The CPU multi-level node equals `_NestedQuantize` (outputs and gradients to x, u, level weights, prune gates)."""
    from bb_lightning.methods.bayesian_bits import hard_concrete as hc
    from bb_lightning.core.fake_quant import _NestedQuantize
    from bb_lightning.methods.bayesian_bits.host_path import HostNested, channel_gates

    g = torch.Generator().manual_seed(len(bits) + signed)
    x = (torch.randn(6, 3, 2, 2, generator=g) * 1.2).requires_grad_()
    u = torch.tensor(1.0, requires_grad=True)
    raw = torch.rand(len(bits), generator=g) + 0.1
    w = (raw / raw.sum()).requires_grad_()
    la = (torch.randn(6, generator=g) * 2).requires_grad_()
    noise = torch.rand(6, generator=g)
    grad = torch.randn(6, 3, 2, 2, generator=g)
    z, idx, dz = channel_gates(la.detach(), noise)
    out = HostNested.apply(x, u, w, w.tolist(), la, z, idx, dz, list(bits), signed)
    got = torch.autograd.grad(out, (x, u, w, la), grad)
    ref_out = _NestedQuantize.apply(x, u, w, hc.sample(la, noise).view(-1, 1, 1, 1), bits, signed)
    ref = torch.autograd.grad(ref_out, (x, u, w, la), grad)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for name, a, b in zip(("x", "u", "w", "log_alpha"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("path", ["single", "general", "host"])
def test_negative_range_parameter_acts_as_its_magnitude(path):
    """A learned x_max that trained through 0 must not invert the range: u = |x_max|, du/dx_max = sign(x_max)."""
    from bb_lightning.core.fake_quant import _NestedQuantize, _SingleLevelQuantize
    from bb_lightning.methods.bayesian_bits.host_path import HostNested

    x = torch.linspace(-1.5, 1.5, 61)
    G = torch.randn(61, generator=torch.Generator().manual_seed(3))

    def run(xm):
        u = torch.tensor(xm, requires_grad=True)
        if path == "single":
            out = _SingleLevelQuantize.apply(x, u, None, 4, True)
        elif path == "general":
            out = _NestedQuantize.apply(x, u, torch.ones(1, requires_grad=True), None, (4,), True)
        else:
            out = HostNested.apply(x, u, None, [1.0], None, None, None, None, [4], True)
        (gu,) = torch.autograd.grad((out * G).sum(), u)
        return out.detach(), gu

    pos, gpos = run(0.8)
    neg, gneg = run(-0.8)
    torch.testing.assert_close(neg, pos, rtol=0, atol=0)
    torch.testing.assert_close(gneg, -gpos)


def test_exported_range_is_the_effective_one():
    from bb_lightning.methods.bayesian_bits import BayesianBitsConfig, BayesianBitsQuantizer

    q = BayesianBitsQuantizer(BayesianBitsConfig(), "input")
    q.init_range(torch.rand(10))
    with torch.no_grad():
        q.x_max.fill_(-0.25)
    assert q.range() == (0.0, 0.25)
    with torch.no_grad():
        q.x_max.fill_(0.0)
    assert q.range()[1] > 0
