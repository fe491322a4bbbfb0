"""The Bayesian Bits quantizer (spec 1.4, 1.7, 2.3-2.5, 3.2, pitfalls 1, 3, 4, 5, 7, 18).

Training outputs are checked against the spec's nested formula evaluated in float64 on the *same* uniform noise
(``torch.rand`` / ``torch.rand_like`` are replaced by a queue of given tensors), with the hard-concrete gates and the
cut-off rule re-implemented here from the spec. Gate gradients are compared with autograd through that float64
reference (gates are plain multipliers there, so no straight-through estimator is involved).
"""

from __future__ import annotations

import math

import pytest
import torch
from quant_refs import CHAIN, SHRINK, assert_quant_close, ref_clip, ref_level, ref_nested, ref_step
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bb_lightning.core.fake_quant import fake_quantize
from bb_lightning.methods.bayesian_bits.config import BayesianBitsConfig
from bb_lightning.methods.bayesian_bits.quantizer import BayesianBitsQuantizer
from bb_lightning.methods.bayesian_bits.regularizer import batched_gate_penalty

BETA, LOW, HIGH = 2.0 / 3.0, -0.1, 1.1
C = BETA * math.log(11.0)
EVAL_THR = math.log(0.66 / 0.34) - C  # -0.9353


# ----------------------------------------------------------------------------------------------------------------
# float64 references
# ----------------------------------------------------------------------------------------------------------------
def pi(la) -> torch.Tensor:
    """P(z > 0) = sigmoid(log_alpha + beta ln 11)."""
    return torch.sigmoid(torch.as_tensor(la, dtype=torch.float64) + C)


def ref_gates(log_alpha: torch.Tensor, noise: torch.Tensor, cutoff: float | None = -2.0) -> torch.Tensor:
    la = log_alpha.double()
    u = noise.double()
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + la) / BETA)
    z = (s * (HIGH - LOW) + LOW).clamp(0.0, 1.0)
    if cutoff is not None:  # spec 2.4.1: the first gate <= cutoff and all higher ones are 0
        alive = torch.cumprod((log_alpha.detach() > cutoff).double(), 0)
        z = z * alive
    return z


class NoiseQueue:
    """Replaces torch.rand / torch.rand_like: hands out the given tensors in order (checking shapes)."""

    def __init__(self, monkeypatch, *tensors):
        self.queue = [t.clone() for t in tensors]
        self.calls = 0
        monkeypatch.setattr(torch, "rand", self.rand)
        monkeypatch.setattr(torch, "rand_like", self.rand_like)

    def _next(self, shape):
        t = self.queue.pop(0)
        assert tuple(t.shape) == tuple(shape), (t.shape, shape)
        self.calls += 1
        return t.float()

    def rand(self, *size, **_kw):
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        return self._next(size)

    def rand_like(self, t, **_kw):
        return self._next(t.shape)


def make(role="weight", channels=None, prune=None, x=None, **cfg) -> BayesianBitsQuantizer:
    q = BayesianBitsQuantizer(BayesianBitsConfig(**cfg), role, channels, prune)
    if x is not None:
        q.init_range(x)
    return q


def set_(param, values):
    with torch.no_grad():
        param.copy_(torch.as_tensor(values, dtype=param.dtype))


# ----------------------------------------------------------------------------------------------------------------
# construction, parameters, ranges
# ----------------------------------------------------------------------------------------------------------------
def test_parameters_and_shapes():
    q = make("weight", 7, gate_init=(6, 6, -6, -6), prune_init=4.0)
    assert q.log_alpha.shape == (4,)
    assert q.log_alpha.tolist() == [6.0, 6.0, -6.0, -6.0]
    assert q.prune_log_alpha.shape == (7,)
    assert torch.all(q.prune_log_alpha == 4.0)
    assert q.x_max.dim() == 0
    groups = q.parameter_groups()
    assert {id(p) for p in groups["gates"]} == {id(q.log_alpha), id(q.prune_log_alpha)}
    assert [id(p) for p in groups["ranges"]] == [id(q.x_max)]
    # inputs never prune; prune=False override (classifier) has none either
    assert make("input", None, prune=True).prune_log_alpha is None
    assert make("weight", 7, prune=False).prune_log_alpha is None
    # the per-tensor "no pruning" (classifier) wins over a config that prunes
    assert BayesianBitsQuantizer(BayesianBitsConfig(prune=True), "weight", 7, False).prune_log_alpha is None
    assert BayesianBitsQuantizer(BayesianBitsConfig(prune=False), "weight", 7).prune_log_alpha is None
    # default gate init: 6 for every gate except the float one, which is cut off (-6) -> starts at 16 bits
    assert make("weight", 3).log_alpha.tolist() == [6.0, 6.0, 6.0, -6.0]
    assert make("weight", 3).hard_bits() == 16


def test_init_range_sign_and_max():
    w = torch.tensor([[-3.0, 0.5], [2.0, 1.0]])
    q = make("weight", 2, x=w)
    assert q._signed and bool(q.signed)
    assert float(q.x_max.detach()) == pytest.approx(3.0)  # package choice: max|x| (spec 1.1 allows it; records it)
    q2 = make("input", x=torch.tensor([0.0, 0.7, 2.5]))
    assert not q2._signed
    assert float(q2.x_max.detach()) == pytest.approx(2.5)
    assert q2.range() == (0.0, pytest.approx(2.5))


def test_input_quantizer_initialises_at_first_training_batch():
    q = make("input", gate_init=(20, 20, -6, -6))
    x = torch.tensor([0.1, 0.4, 1.9])
    q.eval()
    assert torch.equal(q(x), x)  # not calibrated: pass-through in eval
    q.train()
    out = q(x)
    assert float(q.x_max.detach()) == pytest.approx(1.9)
    assert not q._signed
    assert_quant_close(out, ref_level(x, float(q.x_max.detach()), 8, False), 1.9, 0.0, max_frac=0.0)


def test_config_validation():
    from bb_lightning.errors import BBConfigError

    for bad in [dict(bits=(2, 4, 6)), dict(bits=(4, 8)), dict(bits=(2, 4, 8, 16, 32, 64)), dict(gate_init=(1, 2)),
                dict(eval_threshold=0.0), dict(gate_cutoff=float("nan"))]:
        with pytest.raises(BBConfigError):
            BayesianBitsConfig(**bad)


# ----------------------------------------------------------------------------------------------------------------
# penalty (spec 3.2, pitfall 1)
# ----------------------------------------------------------------------------------------------------------------
def ref_penalty(log_alpha, bits, cost_scale, prune_log_alpha=None) -> float:
    p = pi(log_alpha).tolist()
    lam = [cost_scale * b for b in bits]
    if prune_log_alpha is None:
        total, prod = 1.0, 1.0
        for j, pj in enumerate(p):
            prod *= pj
            total += lam[j + 1] * prod
        return total
    acc = 0.0
    for p2 in pi(prune_log_alpha).tolist():
        term, prod = lam[0] * p2, p2
        for j, pj in enumerate(p):
            prod *= pj
            term += lam[j + 1] * prod
        acc += term
    return acc / len(prune_log_alpha)


@pytest.mark.parametrize("cost_scale", [0.0, 0.0015625, 0.16, 1.0, 3.7])
@pytest.mark.parametrize("pruned", [False, True])
def test_penalty_matches_spec_formula(cost_scale, pruned):
    g = torch.Generator().manual_seed(int(cost_scale * 1000) + pruned)
    q = make("weight", 9, prune=pruned)
    la = (torch.rand(4, generator=g) * 12 - 6).tolist()
    set_(q.log_alpha, la)
    pla = None
    if pruned:
        pla = (torch.rand(9, generator=g) * 12 - 6).tolist()
        set_(q.prune_log_alpha, pla)
    got = q.penalty(cost_scale).item()
    expected = ref_penalty(torch.tensor(la), CHAIN, cost_scale, None if pla is None else torch.tensor(pla))
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_penalty_spec_examples():
    # spec 3.7: the ResNet18 fc weight quantizer (no pruning, inits 6/6/6/-6, MACs 512000 / 118013952) has R = 1.123
    q = make("weight", 1000, prune=False, gate_init=(6, 6, 6, -6))
    assert q.penalty(512000 / 118013952).item() == pytest.approx(1.123, abs=1e-3)
    # spec 3.7: a weight quantizer with MACs = MACs_max * 0.98 (a ResNet18 3x3 conv: 115605504 / 118013952),
    # pruning at 6, inits 6/6/6/-6 has R = 29.72
    q = make("weight", 64, gate_init=(6, 6, 6, -6), prune_init=6.0)
    assert q.penalty(115605504 / 118013952).item() == pytest.approx(29.72, abs=0.006)
    # bop prior: with every gate at +6 and no pruning the penalty is ~ 1 + 60 * cost_scale
    q = make("input", gate_init=(6, 6, 6, 6))
    assert q.penalty(0.5).item() == pytest.approx(1 + 0.5 * (4 + 8 + 16 + 32), rel=2e-3)
    # at 8 bits with pruning the weight pays (2 + 4 + 8) = 14 units (spec 3.3)
    q = make("weight", 4, gate_init=(20, 20, -20, -20), prune_init=20.0)
    assert q.penalty(1.0).item() == pytest.approx(14.0, rel=1e-6)


def test_penalty_shorter_chain():
    q = make("weight", 3, bits=(2, 4, 8), gate_init=(0.3, -1.2), prune_init=0.5)
    expected = ref_penalty(torch.tensor([0.3, -1.2]), (2, 4, 8), 0.7, torch.tensor([0.5, 0.5, 0.5]))
    assert q.penalty(0.7).item() == pytest.approx(expected, rel=1e-6)


def test_penalty_gradients_reach_every_gate_including_cut_off_ones():
    q = make("weight", 5, gate_init=(1.0, -3.0, -6.0, -6.0), prune_init=2.0)
    q.penalty(0.4).backward()
    assert torch.all(q.log_alpha.grad > 0)  # penalty pushes every gate down, cut-off ones too (spec 3.2)
    assert torch.all(q.prune_log_alpha.grad > 0)
    # compare with autograd through the float64 reference
    la = q.log_alpha.detach().double().requires_grad_()
    pla = q.prune_log_alpha.detach().double().requires_grad_()
    p, p2 = pi(la), pi(pla)
    cum = torch.cumprod(p, 0)
    ref = (p2 * (0.4 * 2 + 0.4 * (torch.tensor([4.0, 8, 16, 32], dtype=torch.float64) * cum).sum())).mean()
    ref.backward()
    torch.testing.assert_close(q.log_alpha.grad.double(), la.grad, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(q.prune_log_alpha.grad.double(), pla.grad, rtol=1e-5, atol=1e-9)


def test_frozen_penalty_is_zero():
    q = make("weight", 4, gate_init=(6, 6, -6, -6))
    assert q.penalty(1.0).item() > 1
    q.freeze()
    assert q.penalty(1.0).item() == 0.0
    assert not q.log_alpha.requires_grad and not q.prune_log_alpha.requires_grad
    qi = make("input")
    qi.freeze()
    assert qi.penalty(0.3).item() == 0.0


def test_gate_probabilities():
    q = make("input", gate_init=(6, 0, -0.9, -6))
    torch.testing.assert_close(q.gate_probabilities().double(), pi([6, 0, -0.9, -6]), rtol=1e-6, atol=0)
    assert not q.gate_probabilities().requires_grad


def _mixed_quantizers():
    qs = [
        make("weight", 3, gate_init=(1.0, 0.5, -1.0, -3.0), prune_init=2.0),
        make("input", gate_init=(6, 6, -6, -6)),
        make("weight", 7, prune=False, gate_init=(0.2, 0.1, 0.0, -0.5)),
        make("weight", 4, gate_init=(3, -1, 2, 0), prune_init=-0.5),
        make("input", gate_init=(-1.0, 2.0, 0.5, 0.5)),
    ]
    with torch.no_grad():
        qs[3].prune_log_alpha.copy_(torch.tensor([-3.0, 0.0, 1.0, 4.0]))
    return qs, [0.5, 1.0, 0.01, 0.3, 0.07]


def _grads(qs):
    out = []
    for q in qs:
        for p in (q.log_alpha, q.prune_log_alpha):
            if p is not None:
                out.append(torch.zeros_like(p) if p.grad is None else p.grad.clone())
                p.grad = None
    return out


def test_batched_penalty_equals_sum_of_penalties():
    qs, scales = _mixed_quantizers()
    ref = sum(ref_penalty(q.log_alpha.detach(), CHAIN, s,
                          None if q.prune_log_alpha is None else q.prune_log_alpha.detach())
              for q, s in zip(qs, scales))
    loop = torch.stack([q.penalty(s) for q, s in zip(qs, scales)]).sum()
    loop.backward()
    g_loop = _grads(qs)
    cache: dict = {}
    batched = batched_gate_penalty(qs, scales, cache)
    assert batched.item() == pytest.approx(ref, rel=1e-5)
    batched.backward()
    for a, b in zip(_grads(qs), g_loop):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    # second call with the cache: same value; frozen quantizers then drop out
    assert batched_gate_penalty(qs, scales, cache).item() == pytest.approx(ref, rel=1e-5)
    qs[1].freeze()
    ref_frozen = ref - ref_penalty(qs[1].log_alpha.detach(), CHAIN, scales[1])
    assert batched_gate_penalty(qs, scales, cache).item() == pytest.approx(ref_frozen, rel=1e-5)
    for q in qs:
        q.freeze()
    assert batched_gate_penalty(qs, scales, cache).item() == 0.0


@pytest.mark.parametrize("group", ["only_unpruned", "only_pruned"])
def test_batched_penalty_homogeneous_groups(group):
    """A regulariser group may hold no pruned quantizer (quantization-only runs, single-layer models, inputs only)
    or only pruned ones (weights-only quantization): both must still give the sum of the penalties."""
    qs, scales = _mixed_quantizers()
    keep = [i for i, q in enumerate(qs) if (q.prune_log_alpha is None) == (group == "only_unpruned")]
    qs, scales = [qs[i] for i in keep], [scales[i] for i in keep]
    expected = sum(q.penalty(s).item() for q, s in zip(qs, scales))
    assert batched_gate_penalty(qs, scales, {}).item() == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# deterministic rule: hard_bits, keep_mask (spec 2.3, 2.4, pitfall 5)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("la", "bits"),
    [
        ((6, 6, -6, -6), 8),
        ((6, 6, 6, -6), 16),
        ((6, 6, 6, 6), 32),
        ((6, -6, -6, -6), 4),
        ((-6, 6, 6, 6), 2),  # nesting: a higher gate is irrelevant once a lower one is off
        ((6, -1.0, 6, 6), 4),  # -1.0 < -0.9353: off
        ((6, -0.93, 6, -6), 16),  # -0.93 > -0.9353: on
        ((0.0, 0.0, 0.0, 0.0), 32),
        ((-0.94, 6, 6, 6), 2),
    ],
)
def test_hard_bits_eval_rule(la, bits):
    q = make("weight", 3, gate_init=la)
    assert q.hard_bits() == bits


def test_hard_bits_respects_gate_cutoff_parameter():
    # a cut-off gate stays off in eval too (spec 2.4.1), even if the eval rule alone would turn it on
    q = make("input", gate_init=(6, 0.3, 6, 6), gate_cutoff=0.5)
    assert q.hard_bits() == 4
    q = make("input", gate_init=(6, 0.3, 6, 6), gate_cutoff=-2.0)
    assert q.hard_bits() == 32


def test_keep_mask_and_fully_pruned():
    q = make("weight", 5, gate_init=(6, 6, -6, -6))
    set_(q.prune_log_alpha, [6.0, -0.93, -0.94, -6.0, EVAL_THR + 1e-4])
    assert q.keep_mask().tolist() == [True, True, False, False, True]
    assert q.keep_mask().dtype == torch.bool
    assert q.hard_bits() == 8  # the width ignores z_2 unless every channel is pruned
    set_(q.prune_log_alpha, [-6.0] * 5)
    assert not q.keep_mask().any()
    assert q.hard_bits() == 0
    assert make("input").keep_mask() is None
    assert make("weight", 5, prune=False).keep_mask() is None


def test_eval_rule_uses_custom_threshold():
    q = make("input", gate_init=(0.5, 0.5, 0.5, 0.5), eval_threshold=0.2)
    # P(z=0) at 0.5 = sigmoid(-0.5 - 1.5986) = 0.109 < 0.2 -> on
    assert q.hard_bits() == 32
    q = make("input", gate_init=(0.5, -1.0, 0.5, 0.5), eval_threshold=0.2)
    # P(z=0) at -1.0 = 0.357 > 0.2 -> off
    assert q.hard_bits() == 4


def test_deterministic_state_follows_parameter_updates():
    q = make("weight", 3, gate_init=(6, 6, 6, 6))
    assert q.hard_bits() == 32
    set_(q.log_alpha, [6.0, -6.0, -6.0, -6.0])  # in-place under no_grad, like an optimizer step
    assert q.hard_bits() == 4
    set_(q.prune_log_alpha, [-6.0, 6.0, 6.0])
    assert q.keep_mask().tolist() == [False, True, True]
    # load_state_dict refreshes too
    q2 = make("weight", 3, gate_init=(6, 6, 6, 6))
    assert q2.hard_bits() == 32
    q2.load_state_dict(q.state_dict())
    assert q2.hard_bits() == 4 and q2.keep_mask().tolist() == [False, True, True]


def test_deterministic_state_follows_data_writes():
    """Pitfall 18: cached bit widths must be invalidated whenever the gates change. Writes through ``.data`` (common
    in user code and older training utilities) do not bump ``_version``, which is the only cache key."""
    q = make("weight", 3, gate_init=(6, 6, 6, 6))
    assert q.hard_bits() == 32
    q.log_alpha.data.copy_(torch.tensor([6.0, -6.0, -6.0, -6.0]))
    assert q.hard_bits() == 4


@pytest.mark.parametrize("signed", [True, False])
def test_eval_output_equals_fixed_quantizer_with_mask(signed):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 4, 3, 3, generator=g)
    if not signed:
        w = w.abs()
    q = make("weight", 6, x=w, gate_init=(6, 6, -6, -6))
    assert q._signed  # weights are always signed ...
    if not signed:  # ... but checkpoints written before that may hold an unsigned weight grid
        sd = q.state_dict()
        sd["signed"] = torch.tensor(False)
        q.load_state_dict(sd)
        assert not q._signed
    set_(q.prune_log_alpha, [6.0, -6.0, 0.0, -1.0, 6.0, 2.0])
    q.eval()
    out = q(w)
    bits = q.hard_bits()
    assert bits == 8
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0]).view(6, 1, 1, 1)
    torch.testing.assert_close(out, fake_quantize(w, q.x_max.detach(), bits, signed) * mask, rtol=0, atol=1e-7)
    u = float(q.x_max.detach())
    assert_quant_close(out, ref_level(w, u, 8, signed) * mask.double(), u, 0.0, max_frac=0.0)
    # deterministic: repeated calls identical; freezing in train mode gives the same output
    torch.testing.assert_close(q(w), out, rtol=0, atol=0)
    q.train()
    q.freeze()
    torch.testing.assert_close(q(w), out, rtol=0, atol=0)


def test_eval_output_fully_pruned_is_zero():
    w = torch.randn(4, 5)
    q = make("weight", 4, x=w, gate_init=(6, 6, -6, -6), prune_init=-6.0)
    q.eval()
    assert torch.count_nonzero(q(w)) == 0


def test_eval_output_input_quantizer_32_bits_is_clipped_identity():
    x = torch.randn(200)
    q = make("input", x=x, gate_init=(6, 6, 6, 6))
    q.eval()
    out = q(x * 1.5)  # some inputs beyond the range are clipped
    torch.testing.assert_close(out.double(), ref_clip(x * 1.5, float(q.x_max.detach()), True), rtol=0, atol=3e-7)


# ----------------------------------------------------------------------------------------------------------------
# training forward: stochastic gates, cut-off, host-side level selection (spec 2.2, 2.4, pitfalls 3, 4)
# ----------------------------------------------------------------------------------------------------------------
def _weight(seed, shape=(5, 3, 2, 2), signed=True):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return w if signed else w.abs()


def _reference_and_grads(q, x, noise, noise_c, G):
    """Float64 reference output and d(sum G*out)/d(log_alpha, prune_log_alpha) through the spec formula."""
    u = float(q.x_max.detach())
    la = q.log_alpha.detach().double().requires_grad_()
    z = ref_gates(la, noise, q.config.gate_cutoff)
    cg, pla = None, None
    if q.prune_log_alpha is not None:
        pla = q.prune_log_alpha.detach().double().requires_grad_()
        zc = ref_gates(pla, noise_c, cutoff=None)
        cg = zc.view((-1,) + (1,) * (x.dim() - 1))
    ref = ref_nested(x, u, q._signed, z, q.bits, cg)
    (ref * G.double()).sum().backward()
    return ref.detach(), z.detach(), la.grad, (None if pla is None else pla.grad)


def _check_training_step(monkeypatch, q, x, noise, noise_c=None, accelerator_path=False, seed=0):
    tensors = [noise] + ([noise_c] if noise_c is not None else [])
    nq = NoiseQueue(monkeypatch, *tensors)
    host_calls = []
    real_host_levels = q._host_levels

    def spy(noise_):
        host_calls.append(1)
        return real_host_levels(noise_)

    monkeypatch.setattr(q, "_host_levels", spy)
    if accelerator_path:  # take the no-host-read branch used on accelerators
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    G = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    q.train()
    q.zero_grad(set_to_none=True)
    out = q(x)
    assert nq.calls == len(tensors)
    assert len(host_calls) == (0 if accelerator_path else 1)
    monkeypatch.undo()
    (out * G).sum().backward()
    ref, z, g_la, g_pla = _reference_and_grads(q, x, noise, noise_c, G)
    u = float(q.x_max.detach())
    g = [1.0]
    for v in z.tolist():
        g.append(g[-1] * v)
    g.append(0.0)
    # a float32 near-tie rounded the other way at level l moves one element by at most w_l s_l
    step = max((g[i] - g[i + 1]) * (ref_step(u, b, q._signed) if b < 32 else 0.0) for i, b in enumerate(q.bits))
    assert_quant_close(out, ref, u, step, max_frac=0.05)
    got_la = torch.zeros(4, dtype=torch.float64) if q.log_alpha.grad is None else q.log_alpha.grad.double()
    scale = float((G.abs()).sum()) * u
    torch.testing.assert_close(got_la, g_la, rtol=2e-4, atol=1e-5 * scale)
    if g_pla is not None:
        got = torch.zeros_like(g_pla) if q.prune_log_alpha.grad is None else q.prune_log_alpha.grad.double()
        torch.testing.assert_close(got, g_pla, rtol=2e-4, atol=1e-5 * scale)
    return out, z


NOISE_CASES = {
    # noise -> (with log_alpha = 0): fractional / exact 0 / exact 1 patterns of z_4..z_32
    "all_fractional": [0.3, 0.6, 0.45, 0.7],
    "z8_zero": [0.4, 0.01, 0.5, 0.5],
    "z4_one_z8_frac_z16_one_z32_zero": [0.99, 0.5, 0.995, 0.003],
    "z4_zero": [0.01, 0.5, 0.5, 0.5],
    "all_one": [0.99, 0.99, 0.99, 0.99],
    "exact_8bit": [0.99, 0.99, 0.01, 0.5],
    "exact_16bit": [0.99, 0.99, 0.99, 0.01],
}


@pytest.mark.parametrize("accelerator_path", [False, True])
@pytest.mark.parametrize("case", list(NOISE_CASES))
@pytest.mark.parametrize("signed", [True, False])
def test_training_forward_matches_reference_on_given_noise(monkeypatch, case, signed, accelerator_path):
    w = _weight(1, signed=signed)
    q = make("weight", 5, x=w, gate_init=(0.0, 0.0, 0.0, 0.0), prune_init=0.0)
    noise = torch.tensor(NOISE_CASES[case])
    noise_c = torch.tensor([0.5, 0.01, 0.99, 0.3, 0.8])  # fractional / 0 / 1 / fractional / fractional
    _, z = _check_training_step(monkeypatch, q, w, noise, noise_c, accelerator_path)
    if case == "z4_zero":
        assert float(z[0]) == 0.0


def test_training_forward_non_contiguous_weight(monkeypatch):
    w = torch.randn(12, 5, generator=torch.Generator().manual_seed(3)).t()  # [5, 12], not contiguous
    assert not w.is_contiguous()
    q = make("weight", 5, x=w, gate_init=(0.0, 0.0, 0.0, 0.0), prune_init=0.0)
    noise_c = torch.tensor([0.5, 0.01, 0.99, 0.3, 0.8])
    _check_training_step(monkeypatch, q, w, torch.tensor([0.99, 0.99, 0.01, 0.5]), noise_c)
    q.zero_grad(set_to_none=True)
    _check_training_step(monkeypatch, q, w, torch.tensor([0.3, 0.6, 0.45, 0.7]), noise_c)


def test_exact_gate_step_still_trains_range_and_pruning_gates(monkeypatch):
    # all doubling samples exact (one 8-bit level): no doubling-gate gradient, but x_max and fractional pruning
    # gates get theirs; checked against the float64 reference and the STE closed form for x_max
    w = _weight(12)
    q = make("weight", 5, x=w * 0.8, gate_init=(0.0, 0.0, 0.0, 0.0), prune_init=0.0)  # some weights clipped
    noise_c = torch.tensor([0.5, 0.01, 0.99, 0.3, 0.8])
    NoiseQueue(monkeypatch, torch.tensor([0.99, 0.99, 0.01, 0.5]), noise_c)
    G = torch.randn(w.shape, generator=torch.Generator().manual_seed(1))
    out = q(w)
    monkeypatch.undo()
    (out * G).sum().backward()
    assert q.log_alpha.grad is None or torch.all(q.log_alpha.grad == 0)
    u = float(q.x_max.detach())
    zc = ref_gates(torch.zeros(5), noise_c, cutoff=None).view(5, 1, 1, 1)
    q8 = ref_level(w, u, 8, True)
    xc = ref_clip(w, u, True)
    hi = u * SHRINK
    dclip = torch.where(w.double() > hi, SHRINK, torch.where(w.double() < -hi, -SHRINK, 0.0))
    expected_u = float((G.double() * zc * ((q8 - xc) / u + dclip)).sum())
    assert float(q.x_max.grad) == pytest.approx(expected_u, rel=1e-4, abs=1e-4)
    # x gradient: z_c inside the clip range, 0 outside
    wx = w.clone().requires_grad_()
    NoiseQueue(monkeypatch, torch.tensor([0.99, 0.99, 0.01, 0.5]), noise_c)
    (q(wx) * G).sum().backward()
    monkeypatch.undo()
    inside = (w.double().abs() < hi)
    torch.testing.assert_close(wx.grad.double(), G.double() * zc * inside, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("accelerator_path", [False, True])
def test_training_forward_input_quantizer(monkeypatch, accelerator_path):
    x = torch.relu(torch.randn(4, 30, generator=torch.Generator().manual_seed(5)))
    q = make("input", x=x, gate_init=(0.5, -0.5, 1.0, 0.0))
    _check_training_step(monkeypatch, q, x * 1.3, torch.tensor([0.35, 0.5, 0.6, 0.4]), None, accelerator_path)


@settings(
    max_examples=30, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 2**20),
    la=st.lists(st.floats(-1.99, 3.0), min_size=4, max_size=4),
    signed=st.booleans(),
)
def test_training_forward_random_gates_property(monkeypatch, seed, la, signed):
    g = torch.Generator().manual_seed(seed)
    w = _weight(seed, shape=(4, 9), signed=signed)
    q = make("weight", 4, x=w, gate_init=tuple(la), prune_init=0.0)
    noise = torch.rand(4, generator=g).clamp(1e-3, 1 - 1e-3)
    noise_c = torch.rand(4, generator=g).clamp(1e-3, 1 - 1e-3)
    with monkeypatch.context() as m:
        _check_training_step(m, q, w, noise, noise_c, False, seed)


@pytest.mark.parametrize("cut", [1, 2, 3])
@pytest.mark.parametrize("cut_value", [-2.0, -2.5, -6.0])
def test_gate_cutoff_forces_higher_gates_off_in_training(monkeypatch, cut, cut_value):
    # gates below the cut-off index sit at 20 (always exactly 1); the cut gate and everything above are forced to 0
    la = [20.0] * 4
    la[cut] = cut_value
    for j in range(cut + 1, 4):
        la[j] = 20.0  # would be on, but is above a cut gate
    w = _weight(2)
    q = make("weight", 5, x=w, gate_init=tuple(la), prune=False)
    u = float(q.x_max.detach())
    expected = ref_level(w, u, CHAIN[cut], True)
    torch.manual_seed(0)
    for _ in range(20):
        out = q(w)
        assert_quant_close(out, expected, u, 0.0, max_frac=0.0)
    # no task-loss gradient for the cut gates (spec 2.4.1)
    q.zero_grad(set_to_none=True)
    (q(w) * torch.randn_like(w)).sum().backward()
    assert q.log_alpha.grad is None or torch.all(q.log_alpha.grad[cut:] == 0)


@pytest.mark.parametrize("accelerator_path", [False, True])
@pytest.mark.parametrize(
    "la", [(0.0, -2.0, 20.0, 20.0), (0.0, 0.0, -2.0, 0.0), (-2.0, 0.0, 0.0, 0.0), (0.0, -1.999, 0.0, -2.0)]
)
def test_gate_cutoff_with_fractional_lower_gates(monkeypatch, la, accelerator_path):
    # fractional samples below the cut gate: output, gate gradients (zero for the cut gates) against the reference
    w = _weight(13)
    q = make("weight", 5, x=w, gate_init=la, prune_init=0.0)
    noise_c = torch.tensor([0.5, 0.01, 0.99, 0.3, 0.8])
    _check_training_step(monkeypatch, q, w, torch.tensor([0.5, 0.9, 0.6, 0.4]), noise_c, accelerator_path)
    cut = next(j for j, v in enumerate(la) if v <= -2.0)
    assert q.log_alpha.grad is None or torch.all(q.log_alpha.grad[cut:] == 0)


def test_gate_cutoff_boundary_is_inclusive():
    w = _weight(3)
    # exactly at the cut-off (-2) the gate is cut; just above it is not (and can then be sampled on)
    q = make("weight", 5, x=w, gate_init=(20.0, -2.0, 20.0, 20.0), prune=False)
    torch.manual_seed(0)
    outs = [q(w) for _ in range(50)]
    assert all(torch.equal(o, outs[0]) for o in outs)
    q2 = make("weight", 5, x=w, gate_init=(20.0, -1.999, 20.0, 20.0), prune=False)
    torch.manual_seed(0)
    outs2 = [q2(w).detach() for _ in range(400)]
    assert any(not torch.equal(o, outs[0]) for o in outs2)  # P(z_8 > 0) = 0.40 per step


def test_zero_sampled_lower_gate_makes_higher_gates_irrelevant(monkeypatch):
    w = _weight(4)
    q = make("weight", 5, x=w, gate_init=(0.0, 0.0, 0.0, 0.0), prune=False)
    u = float(q.x_max.detach())
    outs = []
    for hi in ([0.3, 0.6, 0.7], [0.9, 0.2, 0.5], [0.99, 0.99, 0.99]):
        with monkeypatch.context() as m:
            NoiseQueue(m, torch.tensor([0.01] + hi))  # z_4 = 0 exactly
            outs.append(q(w).detach())
    for o in outs:
        assert_quant_close(o, ref_level(w, u, 2, True), u, 0.0, max_frac=0.0)


def test_exact_gate_step_uses_a_single_autograd_node(monkeypatch):
    # the CPU training step with every doubling sample exact is one node (no gate graph) and matches the reference
    w = _weight(11)
    q = make("weight", 5, x=w, gate_init=(6.0, 6.0, -6.0, -6.0), prune_init=6.0)
    NoiseQueue(monkeypatch, torch.tensor([0.5, 0.5, 0.5, 0.5]), torch.full((5,), 0.5))
    out = q(w)
    monkeypatch.undo()
    # one node whose inputs are the leaf parameters themselves (x_max, prune_log_alpha)
    assert out.grad_fn is not None
    parents = [f for f, _ in out.grad_fn.next_functions if f is not None]
    assert parents and all(type(f).__name__ == "AccumulateGrad" for f in parents)
    assert {id(f.variable) for f in parents} == {id(q.x_max), id(q.prune_log_alpha)}
    u = float(q.x_max.detach())
    assert_quant_close(out, ref_level(w, u, 8, True), u, 0.0, max_frac=0.0)


def test_every_gate_parameter_gets_a_gradient_from_loss_plus_penalty():
    torch.manual_seed(0)
    w = _weight(5, shape=(6, 10))
    q = make("weight", 6, x=w, gate_init=(6.0, 0.0, -1.0, -6.0), prune_init=6.0)
    x_in = torch.randn(8, 10)
    loss = (x_in @ q(w).t()).pow(2).mean() + q.penalty(0.3)
    loss.backward()
    assert q.log_alpha.grad is not None and torch.all(q.log_alpha.grad != 0)
    assert q.prune_log_alpha.grad is not None and torch.all(q.prune_log_alpha.grad != 0)
    assert q.x_max.grad is not None and float(q.x_max.grad) != 0.0


def test_fractional_gates_receive_task_gradient(monkeypatch):
    # the task-loss gradient for log_alpha is non-zero exactly for fractional samples (spec 2.2)
    w = _weight(6)
    q = make("weight", 5, x=w, gate_init=(0.0, 0.0, 0.0, 0.0), prune_init=0.0)
    NoiseQueue(monkeypatch, torch.tensor([0.5, 0.99, 0.5, 0.01]), torch.tensor([0.5, 0.99, 0.01, 0.5, 0.5]))
    out = q(w)
    monkeypatch.undo()
    (out * torch.randn_like(out)).sum().backward()
    g = q.log_alpha.grad
    assert float(g[0]) != 0.0 and float(g[2]) != 0.0
    assert float(g[1]) == 0.0 and float(g[3]) == 0.0  # exact 1 and exact 0 samples
    gp = q.prune_log_alpha.grad
    assert [float(v) != 0.0 for v in gp] == [True, False, False, True, True]


def test_gates_are_shared_by_the_whole_batch():
    # one draw per gate per forward call (pitfall 21): every row of an input batch sees the same gates
    torch.manual_seed(0)
    x = torch.randn(1, 50).repeat(16, 1)
    q = make("input", x=x, gate_init=(0.0, 0.0, 0.0, 0.0))
    for _ in range(5):
        out = q(x)
        assert torch.all(out == out[:1])


def test_training_sample_statistics_at_init():
    # with log_alpha = 6 for z_4, z_8 and cut off z_16, z_32 most steps are exactly 8-bit (P = 0.98789^2)
    torch.manual_seed(0)
    w = _weight(7)
    q = make("weight", 5, x=w, gate_init=(6.0, 6.0, -6.0, -6.0), prune=False)
    u = float(q.x_max.detach())
    q8 = ref_level(w, u, 8, True)
    hits = sum(float((q(w).detach().double() - q8).abs().max()) < 1e-6 for _ in range(300))
    p = 1 / (1 + math.exp(-(6 - C)))
    assert abs(hits / 300 - p * p) < 0.04


# ----------------------------------------------------------------------------------------------------------------
# results a caller holds are never overwritten by later calls
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("training", [False, True])
def test_held_output_is_not_overwritten_by_the_next_call(training):
    """A weight quantizer called twice under ``no_grad`` must not overwrite the tensor returned by the first call
    (e.g. comparing quantized weights before and after a change, or quantizing two weight versions)."""
    w1, w2 = _weight(8, shape=(4, 6)), _weight(9, shape=(4, 6))
    q = make("weight", 4, x=torch.cat([w1, w2]), gate_init=(20.0, 20.0, -6.0, -6.0), prune=False)
    q.train(training)
    with torch.no_grad():
        a = q(w1)
        a_copy = a.clone()
        b = q(w2)
    assert not torch.equal(a_copy, b)
    torch.testing.assert_close(a, a_copy, rtol=0, atol=0)
