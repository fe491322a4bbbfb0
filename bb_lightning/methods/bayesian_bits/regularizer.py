"""The Bayesian Bits regulariser (spec 3.2-3.3): the cost-weighted gate penalty, vectorised over quantizers.

For a quantizer with cost weight ``s`` (`bb_lightning.cost.penalty`), doubling-gate probabilities
``pi_b = P(z_b > 0)`` and ``lam_b = s * b``, the penalty is ``1 + sum_b lam_b prod_{b' <= b} pi_b'`` without pruning
and ``mean_c P(z_2,c > 0) * (s * 2 + sum_b lam_b prod_{b' <= b} pi_b')`` with per-channel pruning gates
(`BayesianBitsQuantizer.penalty`). `BayesianBitsRegularizer` sums a group of quantizers with one bit chain in a
handful of tensor ops instead of a few per quantizer: same value and gradients.

The paper's penalty is additive: a weight bit of layer ``l`` costs the same as an input bit, ``MACs_l / max MACs``,
whatever the other operand's width, although a layer's BOPs are the *product* ``b_w * b_a * MACs``. The first layer
is where this matters most: its input is the 8-bit image, so each of its weight bits costs 8 x MACs, four times
what a weight bit of a layer with 2-bit inputs costs, yet the paper charges both alike (on LeNet-5 the search kept the
first layer at 4 bits, 55% of the network's BOPs). ``regularizer="expected_bops"`` (`ExpectedBops`) penalises the
expected BOPs themselves instead: ``100 * sum_l MACs_l E[kept_l] E[b_w,l] E[b_a,l] / sum_l 32 * 32 * MACs_l``, the
relative BOPs of `bb_lightning.cost.facts` in percent, in expectation over the gates (independent, so the expectation
of the product is the product of expectations), with ``E[b] = 2 + sum_b (b - b/2) prod_{b' <= b} P(z_b' > 0)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from collections.abc import Mapping

from torch import nn

from ...cost.penalty import CostConfig, CostKind, CostRegularizer
from ...cost.record import LayerRecord
from ...core.fake_quant import FLOAT_BITS
from ...errors import BBConfigError
from . import hard_concrete as hc
from .quantizer import BayesianBitsQuantizer


def batched_gate_penalty(
    quantizers: list[BayesianBitsQuantizer], scales: list[float], cache: dict | None = None
) -> Tensor:
    """``sum_k penalty_k(scale_k)`` for many quantizers with one bit chain; frozen quantizers contribute 0.

    ``cache`` (owned by the caller) keeps the constant index tensors on the device between calls.
    """
    active = [i for i, q in enumerate(quantizers) if not q.frozen]
    if not active:
        return quantizers[0].log_alpha.new_zeros(())
    bits = quantizers[0]._bits_f
    key = (tuple(active), bits.device)
    const = None if cache is None else cache.get(key)
    if const is None:
        qs = [quantizers[i] for i in active]
        pruned = [i for i, q in enumerate(qs) if q.prune_log_alpha is not None]
        sizes = [qs[i].prune_log_alpha.numel() for i in pruned]
        dev = bits.device
        const = {
            "scale": torch.tensor([scales[i] for i in active], dtype=torch.float32, device=dev),
            "plain": torch.tensor(
                [i for i, q in enumerate(qs) if q.prune_log_alpha is None], dtype=torch.long, device=dev
            ),
            "pruned": torch.tensor(pruned, dtype=torch.long, device=dev),
            "sizes": torch.tensor(sizes, dtype=torch.float32, device=dev),
            "seg": torch.repeat_interleave(
                torch.arange(len(sizes), device=dev), torch.tensor(sizes, dtype=torch.long, device=dev)
            ),
        }
        if cache is not None:
            cache.clear()
            cache[key] = const
    qs = [quantizers[i] for i in active]
    scale = const["scale"]
    cum = torch.cumprod(hc.prob_nonzero(torch.stack([q.log_alpha for q in qs])), 1)  # [Q, K]
    doubling = scale * (cum @ bits[1:])  # [Q]
    total = doubling[const["plain"]].sum() + float(const["plain"].numel())
    if const["pruned"].numel():
        p = torch.cat([q.prune_log_alpha for q in qs if q.prune_log_alpha is not None])
        pi = hc.prob_nonzero(p)
        mean = pi.new_zeros(const["sizes"].numel()).index_add(0, const["seg"], pi) / const["sizes"]
        idx = const["pruned"]
        total = total + torch.dot(mean, scale[idx] * bits[0] + doubling[idx])
    return total


class ExpectedBops:
    """The expected relative BOPs of a Bayesian Bits network in percent of w32a32 (0-dim, differentiable in the gates).

    One weight quantizer per wrapped layer and its input quantizer (or a constant: the first layer's unquantized
    image at ``input_bits``, other float inputs at 32); unwrapped layers count at w32 with their constant input.
    A layer whose producer prunes (``LayerRecord.producer``) also pays its producer's expected kept fraction, as the
    reported BOPs credit input-side pruning (`bb_lightning.cost.facts`; exact in expectation for ungrouped layers, the
    channel means for grouped convs). Vectorised over all quantizers: a fixed number of tensor ops per step, whatever
    the depth.
    """

    def __init__(self, records: list[LayerRecord], modules: Mapping[str, nn.Module], input_bits: int = 8) -> None:
        self.quantizers: list[BayesianBitsQuantizer] = []
        self._w: list[int] = []  # per wrapped layer: index of its weight quantizer
        self._a: list[int] = []  # per wrapped layer: index of its input quantizer, or -1
        self._a_const: list[float] = []  # per wrapped layer: constant input bits (used where -1)
        self._macs: list[float] = []
        producers: list[str | None] = []  # per wrapped layer
        w_of: dict[str, int] = {}  # layer name -> index of its weight quantizer
        const, total = 0.0, 0.0
        for rec in records:
            total += FLOAT_BITS * FLOAT_BITS * rec.macs
            m = modules.get(rec.name)
            a_const = float(rec.float_input_bits(input_bits))
            if not rec.wrapped or m is None:
                const += FLOAT_BITS * a_const * rec.macs
                continue
            self._w.append(self._add(m.weight_quantizer, rec.name))
            w_of[rec.name] = self._w[-1]
            producers.append(rec.producer)
            iq = m.input_quantizer
            self._a.append(-1 if iq is None else self._add(iq, rec.name))
            self._a_const.append(a_const)
            self._macs.append(float(rec.macs))
        self._const, self._total = const, max(total, 1.0)
        self._p = [w_of.get(p, -1) if p is not None else -1 for p in producers]  # producer's weight quantizer or -1
        self._tensors: dict[torch.device, dict[str, Tensor]] = {}

    def _add(self, q: nn.Module, layer: str) -> int:
        if not isinstance(q, BayesianBitsQuantizer):
            raise BBConfigError(
                f"`expected_bops` needs Bayesian Bits quantizers; layer `{layer}` has {type(q).__name__}."
            )
        if self.quantizers and q.bits != self.quantizers[0].bits:
            raise BBConfigError(
                f"`expected_bops` needs one bit chain for every quantizer; layer `{layer}` has {q.bits}, "
                f"others {self.quantizers[0].bits}."
            )
        self.quantizers.append(q)
        return len(self.quantizers) - 1

    def _constants(self, device: torch.device) -> dict[str, Tensor]:
        c = self._tensors.get(device)
        if c is None:
            qs = self.quantizers
            bits = torch.tensor(qs[0].bits, dtype=torch.float32, device=device)
            pruned = [i for i, q in enumerate(qs) if q.prune_log_alpha is not None]
            sizes = [qs[i].prune_log_alpha.numel() for i in pruned]  # type: ignore[union-attr]
            a = torch.tensor(self._a, dtype=torch.long, device=device)
            c = {
                "steps": bits[1:] - bits[:-1],
                "base": bits[0],
                "cutoff": torch.tensor([q.config.gate_cutoff for q in qs], device=device)[:, None],
                "pruned": torch.tensor(pruned, dtype=torch.long, device=device),
                "sizes": torch.tensor(sizes, dtype=torch.float32, device=device),
                "seg": torch.repeat_interleave(
                    torch.arange(len(sizes), device=device), torch.tensor(sizes, dtype=torch.long, device=device)
                ),
                "w": torch.tensor(self._w, dtype=torch.long, device=device),
                "a": a.clamp(min=0),
                "a_is_q": (a >= 0).to(torch.float32),
                "a_const": torch.tensor(self._a_const, dtype=torch.float32, device=device),
                "macs": torch.tensor(self._macs, dtype=torch.float32, device=device),
                "p": torch.tensor(self._p, dtype=torch.long, device=device).clamp(min=0),
                "p_is_q": torch.tensor([float(i >= 0) for i in self._p], dtype=torch.float32, device=device),
            }
            self._tensors = {device: c}
        return c

    def expected_bits(self) -> Tensor:
        """``[Q]`` expected bit width of each quantizer given that its channel is kept (``FLOAT_BITS`` = all on)."""
        la = torch.stack([q.log_alpha for q in self.quantizers])  # [Q, K]
        c = self._constants(la.device)
        alive = (la.detach() > c["cutoff"]).to(la.dtype).cumprod(1)  # gates at or below the cut-off are 0 for good
        return c["base"] + (torch.cumprod(hc.prob_nonzero(la) * alive, 1) @ c["steps"])

    def keep_probability(self) -> Tensor:
        """``[Q]`` mean over output channels of ``P(z_2 > 0)`` (1 for quantizers without pruning gates)."""
        c = self._constants(self.quantizers[0].log_alpha.device)
        keep = torch.ones(len(self.quantizers), device=c["macs"].device)
        if c["pruned"].numel():
            pi = hc.prob_nonzero(
                torch.cat([q.prune_log_alpha for q in self.quantizers if q.prune_log_alpha is not None])
            )
            mean = pi.new_zeros(c["sizes"].numel()).index_add(0, c["seg"], pi)
            keep = keep.index_put((c["pruned"],), mean / c["sizes"])
        return keep

    def __call__(self) -> Tensor:
        if not self.quantizers:
            return torch.tensor(100.0 * self._const / self._total)
        c = self._constants(self.quantizers[0].log_alpha.device)
        e = self.expected_bits()
        keep = self.keep_probability()
        keep_in = c["p_is_q"] * keep[c["p"]] + (1.0 - c["p_is_q"])
        w = e[c["w"]] * keep[c["w"]] * keep_in
        a = c["a_is_q"] * e[c["a"]] + (1.0 - c["a_is_q"]) * c["a_const"]
        return 100.0 * (torch.dot(c["macs"], w * a) + self._const) / self._total


class BayesianBitsRegularizer(CostRegularizer):
    """``mu * sum_k R_k`` over every Bayesian Bits quantizer (config: `bb_lightning.cost.penalty.CostConfig`); with
    ``kind="expected_bops"``: ``mu`` times the expected relative BOPs in percent (`ExpectedBops`)."""

    supports_expected_bops = True

    def __init__(
        self, records: list[LayerRecord], modules: Mapping[str, nn.Module], cost: CostConfig, input_bits: int = 8
    ) -> None:
        super().__init__(records, modules, cost, input_bits)
        self.expected_bops = ExpectedBops(records, modules, input_bits) if cost.kind == CostKind.EXPECTED_BOPS else None

    def group_penalty(self, quantizers: list, scales: list[float], cache: dict) -> Tensor:  # type: ignore[override]
        return batched_gate_penalty(quantizers, scales, cache)

    def raw(self) -> Tensor:
        if self.expected_bops is None:
            return super().raw()
        qs = self.expected_bops.quantizers
        if qs and all(q.frozen for q in qs):  # nothing left to search (as the paper's penalty: 0 once frozen)
            return qs[0].log_alpha.new_zeros(())
        return self.expected_bops()


__all__ = ["BayesianBitsRegularizer", "ExpectedBops", "batched_gate_penalty"]
