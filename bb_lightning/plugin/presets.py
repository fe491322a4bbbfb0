"""``BayesianBits`` and ``BitPruning``: presets of `QuantizationSearch` that build the method's two configs.

Each preset takes only its method's own arguments; everything shared (which layers, first/last-layer policies,
BatchNorm folding, the warm-up / ramp / fine-tune schedule, ``group_lrs``, the export, ``model_attr``,
``input_size``) is a keyword argument of `QuantizationSearch`, documented there once and named the same for every
method. The two regulariser knobs have different names because they have different units: Bayesian Bits' ``mu``
multiplies the paper's sum of gate penalties, BitPruning's ``strength`` a cost expressed as a fraction of its
float32 value.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from .. import _validate as v
from ..cost.penalty import CostConfig
from ..methods.bayesian_bits import BayesianBitsConfig
from ..methods.bayesian_bits.hard_concrete import EVAL_THRESHOLD, eval_log_alpha_threshold
from ..methods.bit_pruning import BitCostConfig, BitPruningConfig
from ..wrap.bn_fold import find_bn_pairs
from .search import QuantizationSearch
from .state import example_input, resolve_root
from .search_defaults import bayesian_bits_travel, bit_pruning_travel, start_within_reach


def _group_lrs(group_lrs: Any, **named: float | None) -> Any:
    """``group_lrs`` with the preset's ``<group>_lr`` shorthands merged in (shorthands win)."""
    lrs = dict(group_lrs) if isinstance(group_lrs, dict) else group_lrs
    for arg, value in named.items():
        if value is not None:
            lrs = {**(lrs or {}), arg: v.positive(f"{arg.rstrip('s')}_lr", value)}
    return lrs


class BayesianBits(QuantizationSearch):
    """Learn mixed-precision quantization and channel pruning of a timm model with Bayesian Bits.

    Every quantized tensor gets a 2-bit base grid plus hard-concrete gated residuals at 4, 8, 16 and 32 bits, and
    weights a 0-bit gate per output channel (pruning). The regulariser is ``mu * sum_k R_k`` with the cost-weighted
    gate penalties ``R_k`` of spec 3.2 (`bb_lightning.methods.bayesian_bits.regularizer`). Gates are fixed
    deterministically at the end of ``fit`` (``P(z = 0) < eval_threshold``).

    Args:
        mu: the paper's regulariser strength (>= 0; reference values 0.01 .. 0.2): loss = task loss +
            ``mu * sum_k R_k``, where ``R_k`` counts expected bits times the layer's cost weight.
        regularizer: ``"bops"`` (the paper's additive penalty, cost weight ``MACs / max MACs`` per quantizer),
            ``"memory"`` (``params / max params``, weights only) or ``"expected_bops"``: the expected relative BOPs
            of the network in percent, ``sum_l MACs_l E[kept] E[b_w] E[b_a]`` over the w32a32 count, so a weight
            bit costs what it does in the reported BOPs (the first layer's 8 times its MACs; `mu` then prices one
            percent of relative BOPs in units of the task loss).
        prune: per-output-channel 0-bit gates on weights.
        bits: the doubling chain, starting at 2 (``(2, 4, 8, 16, 32)``; 32 = float).
        gate_init: initial ``log_alpha`` of the doubling gates: one float or one per gate; ``None`` = 6 for each,
            except -6 (cut off for good) for a 32-bit gate, i.e. the search starts at w16a16.
        prune_init: initial ``log_alpha`` of the pruning gates; ``None``: 6. With ``gate_init`` and ``prune_init``
            both left at ``None`` and ``gate_lr`` unset, a run too short to travel from 6 at the noise-limited
            learning rate starts its live gates closer to the decision point instead
            (`bb_lightning.plugin.search_defaults.start_within_reach`: 3.0 for 188 search steps, 6 from 766 on).
        gate_cutoff: a doubling gate at ``log_alpha <= gate_cutoff`` is switched off with all higher ones (ref: -2).
        eval_threshold: a gate is on at evaluation iff ``P(z = 0) < eval_threshold`` (ref: 0.34).
        gate_lr: learning rate of the ``"gates"`` group (shorthand for ``group_lrs["gates"]``); unset: derived from
            the run's length so a gate can travel from its start to the decision point (``log_alpha = -0.935``) in
            the first quarter of the search steps, capped at the noise limit ``1 / sqrt(0.75 * search steps)``
            (`bb_lightning.plugin.search_defaults`). A value that cannot reach a decision in the run gets a warning.
        range_lr: learning rate of the learned ranges, weights' (``"ranges"``) and inputs' (``"input_ranges"``);
            unset: each group's ``max(1e-3, median calibrated range / (0.25 * optimizer steps))``, set before the
            first step (`bb_lightning.plugin.search_defaults.derived_range_lr`). A value too small to move them in
            the run gets a warning.
        strength: deprecated name of ``mu``.
        **kwargs: the shared arguments of `QuantizationSearch` (targets, schedule, export, ...).

    References:
        van Baalen et al., "Bayesian Bits: Unifying Quantization and Pruning", NeurIPS 2020.
    """

    def __init__(
        self,
        mu: float = 0.01,
        regularizer: str = "bops",
        prune: bool = True,
        bits: Sequence[int] = (2, 4, 8, 16, 32),
        gate_init: float | Sequence[float] | None = None,
        prune_init: float | None = None,
        gate_cutoff: float = -2.0,
        eval_threshold: float = EVAL_THRESHOLD,
        gate_lr: float | None = None,
        range_lr: float | None = None,
        strength: float | None = None,
        **kwargs: Any,
    ) -> None:
        if strength is not None:
            warnings.warn("`BayesianBits(strength=...)` is now called `mu`.", FutureWarning, stacklevel=2)
            mu = v.non_negative("strength", strength)
        method = BayesianBitsConfig(
            bits=bits, gate_init=gate_init, prune=prune, prune_init=6.0 if prune_init is None else prune_init,
            gate_cutoff=gate_cutoff, eval_threshold=eval_threshold,
        )
        cost = CostConfig(kind=regularizer, strength=v.non_negative("mu", mu))
        group_lrs = _group_lrs(kwargs.pop("group_lrs", None), gates=gate_lr, ranges=range_lr)
        super().__init__(method, cost, group_lrs=group_lrs, **kwargs)
        self._default_start = gate_init is None and prune_init is None
        travel = bayesian_bits_travel(
            method.gate_inits, method.prune_init, prune, gate_cutoff, eval_log_alpha_threshold(eval_threshold)
        )
        self.search_travel = {} if travel is None else {"gates": travel}
        self.range_lr_arg = "range_lr"

    def _on_new_state(self, trainer: Any, state: Any) -> None:
        """Warn about pruning gates a BatchNorm hides; with the default start, a derived gate LR and a short run, move
        the live gates' start within reach."""
        self._warn_hidden_pruning(trainer, state)
        travel = self.search_travel.get("gates")
        if not self._default_start or travel is None or "gates" in self.schedule.group_lrs:
            return
        start = start_within_reach(travel, self.schedule.step_budget(trainer))
        if start >= travel.start:
            return
        self.search_travel["gates"] = dataclasses.replace(travel, start=start)
        cutoff = self.method_config.gate_cutoff
        with torch.no_grad():
            for q in state.quantizers():
                q.log_alpha.copy_(torch.where(q.log_alpha > cutoff, q.log_alpha.clamp(max=start), q.log_alpha))
                if q.prune_log_alpha is not None:
                    q.prune_log_alpha.clamp_(max=start)
                q.refresh_host_state()

    def _warn_hidden_pruning(self, trainer: Any, state: Any) -> None:
        """Pruning gates on layers followed by an unfolded BatchNorm: in training mode the BatchNorm normalises each
        channel again, so the task loss barely sees a gate that scales it and the regulariser alone decides."""
        if not self.method_config.prune or self.wrap.fold_bn.value != "none" or trainer.lightning_module is None:
            return
        pl_module = trainer.lightning_module
        root = resolve_root(pl_module, state.root_attr)
        pairs = find_bn_pairs(root, example_input(pl_module, root, self.input_size), foldable_only=False)
        hidden = [r.name for r in state.records if r.prune and r.name in pairs]
        if hidden:
            rank_zero_warn(
                f"bb_lightning: {len(hidden)} pruned layers feed a BatchNorm that is not folded (e.g. `{hidden[0]}` -> "
                f"`{pairs[hidden[0]]}`, fold_bn='none'): in training mode the BatchNorm normalises each channel again, "
                "so the task loss cannot defend a channel against its pruning gate and the regulariser alone decides "
                "(on a small ResNet: 25% of the channels pruned at mu=0.0003, 5% with folding). Pass "
                "fold_bn='train' (the reference's training-time folding) or prune=False."
            )


class BitPruning(QuantizationSearch):
    """Learn a real-valued bitlength per weight and input tensor (or per output channel) of a timm model.

    Each site is quantized on a min-max grid; during the search its bitlength ``n`` blends the ``floor(n)``- and
    ``floor(n)+1``-bit grids (straight-through rounding), and the regulariser pushes ``n`` down in proportion to the
    chosen cost. Validation uses the rounded bitlengths (what will be exported). When the bit widths are fixed (the
    ``finetune_epochs`` tail, or the end of ``fit``) they are rounded (``rounding``). The exported config holds
    integer bitlengths (any integer), min-max ranges and, per channel, one bitlength and range per output channel.

    Args:
        strength: weight of the cost in the loss, per unit of cost *as a fraction of its float32 value* (1.0 = the
            whole fp32 cost): loss = task loss + ``strength * cost / cost_fp32`` (or, with ``budget_mode="dual"``,
            the initial multiplier).
        regularizer: ``"bops"``, ``"average_bits"``, ``"weight_memory"``, ``"activation_memory"``,
            ``"bitserial_weight"`` or ``"bitserial_activation"``.
        target: optional budget: bits for ``"average_bits"``, else a fraction of float32 (``1/64`` = w4a4 BOPs).
        budget_mode: ``"hinge"`` (``strength * relu(cost/target - 1)^2``) or ``"dual"`` (dual ascent).
        dual_lr: step size of the dual ascent per training step.
        init_bits: initial bitlength of every site (spec: 8).
        min_bits: lower bound of the bitlengths (spec: 2; at least 1).
        max_bits: upper bound of the bitlengths (spec: 8; at most 16).
        weight_granularity: ``"tensor"``, ``"channel"`` or ``"group"`` (weights; inputs are per tensor).
        group_size: output channels sharing one bitlength with ``"group"``.
        rounding: ``"ceil"`` (``ceil(n - rounding_eps)``, default), ``"round"`` or ``"floor"``.
        rounding_eps: slack of ``"ceil"``.
        ema_momentum: momentum of the running min/max of input activations.
        learn_ranges: learn every range from its min-max start (straight-through gradients, the ``"ranges"`` group)
            instead of keeping min-max statistics (the paper's quantizer); better at 2-3 bits (spec R3).
        range_lr: learning rate of the learned ranges with ``learn_ranges`` (weights' ``"ranges"`` and inputs'
            ``"input_ranges"``); unset: derived from the run's length and the calibrated ranges, as for
            `BayesianBits`.
        weight_grid: ``"minmax"`` (the paper's affine grid, ``2^b`` levels from ``min(w)`` to ``max(w)``) or
            ``"symmetric"`` (``[-u, u]`` with 0 as a level, as Bayesian Bits' grid; per-tensor bitlengths,
            ``min_bits >= 2``). With ``learn_ranges`` the symmetric grid is the better one at 2-4 bits.
        bit_lr: learning rate of the ``"bits"`` group (shorthand for ``group_lrs["bits"]``); unset: derived from
            the run's length so a bitlength can travel from ``init_bits`` to ``min_bits`` in the first quarter of
            the search steps (`bb_lightning.plugin.search_defaults`; the spec suggests 1e-2 with Adam). A value that
            cannot reach ``min_bits`` in the run gets a warning.
        **kwargs: the shared arguments of `QuantizationSearch` (targets, schedule, export, ...).

    References:
        Nikolić et al., "BitPruning: Learning Bitlengths for Aggressive and Accurate Quantization", arXiv:2002.03090.
    """

    def __init__(
        self,
        strength: float = 0.1,
        regularizer: str = "bops",
        target: float | None = None,
        budget_mode: str = "hinge",
        dual_lr: float = 0.01,
        init_bits: float = 8.0,
        min_bits: float = 2.0,
        max_bits: float = 8.0,
        weight_granularity: str = "tensor",
        group_size: int = 8,
        rounding: str = "ceil",
        rounding_eps: float = 0.05,
        ema_momentum: float = 0.9,
        learn_ranges: bool = False,
        range_lr: float | None = None,
        bit_lr: float | None = None,
        weight_grid: str = "minmax",
        **kwargs: Any,
    ) -> None:
        method = BitPruningConfig(
            init_bits=init_bits, min_bits=min_bits, max_bits=max_bits, weight_granularity=weight_granularity,
            group_size=group_size, rounding=rounding, rounding_eps=rounding_eps, ema_momentum=ema_momentum,
            learn_ranges=learn_ranges, weight_grid=weight_grid,
        )
        cost = BitCostConfig(
            kind=regularizer, strength=strength, target=target, budget_mode=budget_mode, dual_lr=dual_lr
        )
        group_lrs = _group_lrs(kwargs.pop("group_lrs", None), bits=bit_lr, ranges=range_lr)
        super().__init__(method, cost, group_lrs=group_lrs, **kwargs)
        self.search_travel = {"bits": bit_pruning_travel(method.init_bits, method.min_bits)}
        self.range_lr_arg = "range_lr"


__all__ = ["BayesianBits", "BitPruning"]
