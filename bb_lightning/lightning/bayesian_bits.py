"""``BayesianBits``: the Lightning callback for Bayesian Bits (flat arguments for users, YAML and LightningCLI)."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import CostConfig, WrapConfig
from ..core.hard_concrete import EVAL_THRESHOLD
from ..methods.bayesian_bits import BayesianBitsConfig
from .callback import QuantizationCallback


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
        prune_init: initial ``log_alpha`` of the pruning gates.
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
        gate_lr: learning rate of the gate parameters (ref: 1e-3 with Adam).
        range_lr: learning rate of the range parameters (ref: 1e-3 with Adam).
        finetune_epochs: fix the gates for the last N epochs of ``fit`` and fine-tune weights and ranges (spec 5.4).
        export_path: where to write the config; default ``<log_dir>/mixed_precision_config.json``.
        overwrite_export: replace an existing file instead of writing ``<name>-v1.json``.
        model_attr: attribute of the LightningModule holding the model; default ``model`` if present, else the module.
        input_size: per-sample input size for counting MACs, e.g. ``(3, 224, 224)``; default from
            ``example_input_array`` or timm's ``pretrained_cfg``.
        export_onnx: also write the deployable ONNX model (``model.onnx``) next to the config (`bb_lightning.deploy`).

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
        prune_init: float = 6.0,
        gate_cutoff: float = -2.0,
        eval_threshold: float = EVAL_THRESHOLD,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        first_layer: str = "weights_only",
        last_layer: str = "no_prune",
        quantize_activations: bool = True,
        input_bits: int = 8,
        fold_bn: str = "none",
        gate_lr: float = 1e-3,
        range_lr: float = 1e-3,
        finetune_epochs: int = 0,
        export_path: str | None = None,
        overwrite_export: bool = False,
        model_attr: str | None = None,
        input_size: Sequence[int] | None = None,
        export_onnx: bool = False,
    ) -> None:
        method_config = BayesianBitsConfig(
            bits=bits,
            gate_init=gate_init,
            prune=prune,
            prune_init=prune_init,
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
            export_onnx=export_onnx,
            model_attr=model_attr,
            input_size=input_size,
        )
