"""``BayesianBits``: the Lightning callback for Bayesian Bits (flat arguments for users, YAML and LightningCLI)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import lightning.pytorch as pl
import torch

from ..config import CostConfig, WrapConfig
from ..core.hard_concrete import EVAL_THRESHOLD, eval_log_alpha_threshold
from ..methods.bayesian_bits import BayesianBitsConfig
from ..search_defaults import bayesian_bits_travel, start_within_reach
from .callback import QuantizationCallback
from .state import QuantizationState


class BayesianBits(QuantizationCallback):
    """Learn mixed-precision quantization and channel pruning of a timm model with Bayesian Bits.

    In ``setup`` every ``nn.Conv1d``/``nn.Conv2d``/``nn.Linear`` of the LightningModule's model (its ``model``
    attribute, or ``model_attr``; timm's ``Conv2dSame``/``StdConv2d``/``ScaledStdConv2d`` included) becomes a gated
    quantized layer, with every gate and range parameter created eagerly, before the optimizers, checkpoint restore
    and DDP. Gate and range parameters get their own optimizer groups (own LR, no weight decay). Add
    `bb_lightning.CostRegularizerMixin` to the LightningModule so the regulariser reaches the loss.
    Validation always uses the deterministic gates; at the end of ``fit`` the gates are fixed, a per-layer summary is
    printed and logged, and the `bb_lightning.MixedPrecisionConfig` is written (``callback.config``).

    Args:
        regularizer: ``"bops"`` (cost weight ``MACs / max MACs``) or ``"memory"`` (``params / max params``, weights).
        strength: the paper's ``mu`` (>= 0): loss = task loss + ``strength * sum_k R_k``.
        prune: per-output-channel 0-bit gates on weights.
        bits: the doubling chain, starting at 2 (``(2, 4, 8, 16, 32)``; 32 = float).
        gate_init: initial ``log_alpha`` of the doubling gates: one float or one per gate; ``None`` = 6 for each,
            except -6 (cut off for good) for a 32-bit gate, i.e. the search starts at w16a16.
        prune_init: initial ``log_alpha`` of the pruning gates; ``None`` (default): 6.
            With both ``gate_init`` and ``prune_init`` at their default, a run too short to travel from 6 at the
            noise-limited learning rate starts its live gates closer to the decision point instead
            (`bb_lightning.search_defaults.start_within_reach`; e.g. 3.0 for 188 search steps, 6 from 766 on).
        gate_cutoff: a doubling gate at ``log_alpha <= gate_cutoff`` is switched off with all higher ones (ref: -2).
        eval_threshold: a gate is on at evaluation iff ``P(z = 0) < eval_threshold`` (ref: 0.34).
        include: module-name patterns (``fnmatch``, relative to the model) to quantize; ``None`` = all.
        exclude: module-name patterns to leave float.
        first_layer: ``"weights_only"`` (input stays float, counted at ``input_bits``), ``"full"`` or ``"float"``.
        last_layer: ``"no_prune"`` (quantized, never pruned), ``"full"`` or ``"float"``.
        quantize_activations: quantize every wrapped layer's input.
        input_bits: bits assumed for the float network input in BOPs (ref: 8).
        fold_bn: fold a BatchNorm that follows a quantized conv/linear into it, so the folded weight is quantized:
            ``"none"``, ``"train"`` (training-time folding with batch statistics, spec 5.5; the reference) or
            ``"static"`` (running statistics folded once); see `bb_lightning.wrap.bn_fold`.
        gate_lr: learning rate of the gate parameters; ``None`` (default): derived from the run's length so a gate
            can travel from its start to the decision point (``log_alpha = -0.935``) in the first quarter of the
            search phase (`bb_lightning.search_defaults`; e.g. 0.14 for 200 steps, 5.9e-4 for the reference's
            47 000-step MNIST run, whose hand-set value is 1e-3 with Adam). A value that cannot reach a decision
            in the run gets a warning saying what to change.
        range_lr: learning rate of the range parameters (ref: 1e-3 with Adam).
        finetune_epochs: fix the gates for the last N epochs of ``fit`` and fine-tune weights and ranges (spec 5.4).
            ``None`` (default): ``round(0.2 * max_epochs)`` (`bb_lightning.search_defaults.default_finetune_epochs`);
            searching up to the last step leaves BatchNorm and weights tuned to the search's noisy network.
        export_path: where to write the config; default ``<log_dir>/mixed_precision_config.json``.
        overwrite_export: replace an existing file instead of writing ``<name>-v1.json``.
        model_attr: attribute of the LightningModule holding the model; default ``model`` if present, else the module.
        input_size: per-sample input size for counting MACs, e.g. ``(3, 224, 224)``; default from
            ``example_input_array`` or timm's ``pretrained_cfg``.

    Raises:
        BBConfigError: an invalid argument; the message names it and the valid choices.

    References:
        van Baalen et al., "Bayesian Bits: Unifying Quantization and Pruning", NeurIPS 2020.
    """

    def __init__(
        self,
        regularizer: str = "bops",
        strength: float = 0.01,
        prune: bool = True,
        bits: Sequence[int] = (2, 4, 8, 16, 32),
        gate_init: float | Sequence[float] | None = None,
        prune_init: float | None = None,
        gate_cutoff: float = -2.0,
        eval_threshold: float = EVAL_THRESHOLD,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        first_layer: str = "weights_only",
        last_layer: str = "no_prune",
        quantize_activations: bool = True,
        input_bits: int = 8,
        fold_bn: str = "none",
        gate_lr: float | None = None,
        range_lr: float = 1e-3,
        finetune_epochs: int | None = None,
        export_path: str | None = None,
        overwrite_export: bool = False,
        model_attr: str | None = None,
        input_size: Sequence[int] | None = None,
    ) -> None:
        self._default_start = gate_init is None and prune_init is None
        method_config = BayesianBitsConfig(
            bits=bits,
            gate_init=gate_init,
            prune=prune,
            prune_init=6.0 if prune_init is None else prune_init,
            gate_cutoff=gate_cutoff,
            eval_threshold=eval_threshold,
        )
        wrap = WrapConfig(
            include=include,
            exclude=exclude,
            first_layer=first_layer,
            last_layer=last_layer,
            quantize_activations=quantize_activations,
            input_bits=input_bits,
            fold_bn=fold_bn,
        )
        super().__init__(
            "bayesian_bits",
            method_config,
            wrap,
            CostConfig(kind=regularizer, strength=strength),
            gate_lr=gate_lr,
            range_lr=range_lr,
            finetune_epochs=finetune_epochs,
            export_path=export_path,
            overwrite_export=overwrite_export,
            model_attr=model_attr,
            input_size=input_size,
            search_travel=[
                t
                for t in [
                    bayesian_bits_travel(
                        method_config.gate_inits, method_config.prune_init, prune, gate_cutoff,
                        eval_log_alpha_threshold(eval_threshold),
                    )
                ]
                if t is not None
            ],
        )

    def _on_new_state(self, trainer: pl.Trainer, state: QuantizationState) -> None:
        """Default start and a short run: move the live gates' start within reach (see ``prune_init``)."""
        travel = self.search_travel.get("gates")
        if not self._default_start or travel is None or self.gate_lr is not None:
            return
        start = start_within_reach(travel, self._search_schedule(trainer))
        if start >= travel.start:
            return
        self.search_travel["gates"] = dataclasses.replace(travel, start=start)
        cutoff = self.method_config.gate_cutoff
        with torch.no_grad():
            for q in state.quantizers():
                live = q.log_alpha > cutoff
                q.log_alpha.copy_(torch.where(live, q.log_alpha.clamp(max=start), q.log_alpha))
                if q.prune_log_alpha is not None:
                    q.prune_log_alpha.clamp_(max=start)
            for q in state.quantizers():
                q.refresh_host_state()

