"""The Bayesian Bits regulariser (spec 3.2-3.3): the cost-weighted gate penalty, vectorised over quantizers.

For a quantizer with cost weight ``s`` (`bb_lightning.cost.penalty`), doubling-gate probabilities
``pi_b = P(z_b > 0)`` and ``lam_b = s * b``, the penalty is ``1 + sum_b lam_b prod_{b' <= b} pi_b'`` without pruning
and ``mean_c P(z_2,c > 0) * (s * 2 + sum_b lam_b prod_{b' <= b} pi_b')`` with per-channel pruning gates
(`BayesianBitsQuantizer.penalty`). `BayesianBitsRegularizer` sums a group of quantizers with one bit chain in a
handful of tensor ops instead of a few per quantizer: same value and gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...cost.penalty import CostRegularizer
from . import hard_concrete as hc
from .quantizer import BayesianBitsQuantizer


def batched_gate_penalty(quantizers: list[BayesianBitsQuantizer], scales: list[float], cache: dict | None = None) -> Tensor:
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


class BayesianBitsRegularizer(CostRegularizer):
    """``mu * sum_k R_k`` over every Bayesian Bits quantizer (config: `bb_lightning.cost.penalty.CostConfig`)."""

    def group_penalty(self, quantizers: list, scales: list[float], cache: dict) -> Tensor:  # type: ignore[override]
        return batched_gate_penalty(quantizers, scales, cache)


__all__ = ["BayesianBitsRegularizer", "batched_gate_penalty"]
