"""``BitPruning``: the Lightning callback for BitPruning (flat arguments for users, YAML and LightningCLI)."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import WrapConfig
from ..cost.bit_cost import BitCostConfig
from ..methods.bit_pruning import BitPruningConfig
from .callback import QuantizationCallback


class BitPruning(QuantizationCallback):
    """Learn a real-valued bitlength per weight and input tensor (or per output channel) of a timm model.

    Wrapping, optimizer groups, logging, checkpointing and export work as for `bb_lightning.BayesianBits`; add
    `bb_lightning.CostRegularizerMixin` to the LightningModule. Each site is quantized on a min-max grid; during the
    search its bitlength ``n`` blends the ``floor(n)``- and ``floor(n)+1``-bit grids (straight-through rounding), and
    a regulariser pushes ``n`` down in proportion to the chosen cost. Validation uses the rounded bitlengths (what will
    be exported). Schedule: ``warmup_epochs`` without penalty, a linear ``ramp_epochs``, the search, then for the last
    ``finetune_epochs`` the bitlengths are rounded (``rounding``), removed from the optimizer, and weights fine-tune.
    The exported `bb_lightning.MixedPrecisionConfig` holds integer bitlengths (any integer), min-max ranges and, with
    per-channel granularity, one bitlength and range per output channel.

    Args:
        regularizer: ``"bops"``, ``"average_bits"``, ``"weight_memory"``, ``"activation_memory"``,
            ``"bitserial_weight"`` or ``"bitserial_activation"``; each cost is a fraction of its float32 value.
        strength: weight of the cost (or, with ``budget_mode="dual"``, the initial multiplier).
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
        include: module-name patterns (``fnmatch``, relative to the model) to quantize; ``None`` = all.
        exclude: module-name patterns to leave float.
        first_layer: ``"weights_only"`` (input stays float, counted at ``input_bits``), ``"full"`` or ``"float"``.
        last_layer: ``"no_prune"`` or ``"full"`` (the same here: BitPruning prunes no channels), or ``"float"``.
        quantize_activations: quantize every wrapped layer's input.
        input_bits: bits assumed for the float network input in the costs (ref: 8).
        fold_bn: fold a BatchNorm that follows a quantized conv/linear into it, so the folded weight is quantized:
            ``"none"``, ``"train"`` (training-time folding) or ``"static"``; see `bb_lightning.wrap.bn_fold`.
        bit_lr: learning rate of the bitlength parameters (spec: 1e-2 with Adam; no weight decay).
        warmup_epochs: epochs (may be fractional) at the initial bitlengths without penalty.
        ramp_epochs: epochs over which the strength rises linearly from 0 to its value.
        finetune_epochs: round and freeze the bitlengths for the last N epochs and fine-tune the weights.
        export_path: where to write the config; default ``<log_dir>/mixed_precision_config.json``.
        overwrite_export: replace an existing file instead of writing ``<name>-v1.json``.
        model_attr: attribute of the LightningModule holding the model; default ``model`` if present, else the module.
        input_size: per-sample input size for counting MACs, e.g. ``(3, 224, 224)``.
        export_onnx: also write the deployable ONNX model (``model.onnx``) next to the config (`bb_lightning.deploy`).

    Raises:
        BBConfigError: an invalid argument; the message names it and the valid choices.

    References:
        Nikolić et al., "BitPruning: Learning Bitlengths for Aggressive and Accurate Quantization", arXiv:2002.03090.
    """

    def __init__(
        self,
        regularizer: str = "bops",
        strength: float = 0.1,
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
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        first_layer: str = "weights_only",
        last_layer: str = "no_prune",
        quantize_activations: bool = True,
        input_bits: int = 8,
        fold_bn: str = "none",
        bit_lr: float = 1e-2,
        warmup_epochs: float = 0.0,
        ramp_epochs: float = 0.0,
        finetune_epochs: int = 0,
        export_path: str | None = None,
        overwrite_export: bool = False,
        model_attr: str | None = None,
        input_size: Sequence[int] | None = None,
        export_onnx: bool = False,
    ) -> None:
        method_config = BitPruningConfig(
            init_bits=init_bits,
            min_bits=min_bits,
            max_bits=max_bits,
            weight_granularity=weight_granularity,
            group_size=group_size,
            rounding=rounding,
            rounding_eps=rounding_eps,
            ema_momentum=ema_momentum,
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
        cost = BitCostConfig(
            kind=regularizer, strength=strength, target=target, budget_mode=budget_mode, dual_lr=dual_lr
        )
        super().__init__(
            "bit_pruning",
            method_config,
            wrap,
            cost,
            finetune_epochs=finetune_epochs,
            export_path=export_path,
            overwrite_export=overwrite_export,
            export_onnx=export_onnx,
            model_attr=model_attr,
            input_size=input_size,
            group_lrs={"bits": bit_lr},
            warmup_epochs=warmup_epochs,
            ramp_epochs=ramp_epochs,
        )
