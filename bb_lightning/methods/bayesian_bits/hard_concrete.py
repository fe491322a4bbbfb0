"""Hard-concrete gates (Louizos, Welling & Kingma, 2018) as used by Bayesian Bits.

A gate is parameterised by a location ``log_alpha`` (any shape). Constants follow the paper and the
reference code: temperature ``BETA = 2/3``, stretch interval ``(LOW, HIGH) = (-0.1, 1.1)``.

References:
    Louizos et al., "Learning Sparse Neural Networks through L0 Regularization", ICLR 2018.
    van Baalen et al., "Bayesian Bits: Unifying Quantization and Pruning", NeurIPS 2020.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BETA: float = 2.0 / 3.0
LOW: float = -0.1
HIGH: float = 1.1
#: ``beta * log(-LOW / HIGH)``: ``P(z > 0) = sigmoid(log_alpha - LOG_RATIO)``.
LOG_RATIO: float = BETA * math.log(-LOW / HIGH)
#: Default evaluation threshold on ``P(z = 0)``: a gate is on at evaluation iff ``P(z = 0) < 0.34``.
EVAL_THRESHOLD: float = 0.34


def prob_nonzero(log_alpha: Tensor) -> Tensor:
    """``P(z > 0)`` of each gate, differentiable; same shape as ``log_alpha``.

    >>> round(prob_nonzero(torch.tensor(0.0)).item(), 3)
    0.832
    """
    return torch.sigmoid(log_alpha - LOG_RATIO)


def eval_log_alpha_threshold(threshold: float = EVAL_THRESHOLD) -> float:
    """The ``log_alpha`` above which a gate is on at evaluation (``P(z=0) < threshold``).

    >>> round(eval_log_alpha_threshold(), 4)
    -0.9353
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"Expected the evaluation threshold on P(z=0) to lie in (0, 1), but got {threshold}.")
    return math.log((1.0 - threshold) / threshold) + LOG_RATIO


class _HardConcreteSample(torch.autograd.Function):
    """One autograd node for ``z = clamp(sigmoid((logit(u) + log_alpha) / BETA) * (HIGH - LOW) + LOW, 0, 1)``."""

    @staticmethod
    def forward(ctx, log_alpha, noise):  # type: ignore[override]
        s = torch.sigmoid((torch.logit(noise, eps=1e-6) + log_alpha) / BETA)
        pre = s * (HIGH - LOW) + LOW
        ctx.save_for_backward(s, pre)
        return pre.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        s, pre = ctx.saved_tensors
        inside = (pre > 0.0) & (pre < 1.0)  # exact 0 and 1 carry no gradient
        return grad * inside * s * (1.0 - s) * ((HIGH - LOW) / BETA), None


def sample(log_alpha: Tensor, noise: Tensor | None = None) -> Tensor:
    """One hard-concrete sample per element of ``log_alpha`` (shared by the whole batch), in ``[0, 1]``.

    ``noise`` is an optional ``Uniform(0, 1)`` tensor of the same shape (drawn here if omitted); exact 0 and 1 occur
    with positive probability and carry no gradient, as in the reference.
    """
    if noise is None:
        noise = torch.rand_like(log_alpha)
    return _HardConcreteSample.apply(log_alpha, noise)


def deterministic(log_alpha: Tensor, threshold: float = EVAL_THRESHOLD) -> Tensor:
    """The evaluation-time gate: ``1.0`` where ``P(z = 0) < threshold``, else ``0.0``; same shape."""
    return (log_alpha > eval_log_alpha_threshold(threshold)).to(log_alpha.dtype)
