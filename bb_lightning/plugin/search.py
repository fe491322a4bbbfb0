"""``QuantizationSearch``: the one search callback; the method comes in as a config value.

``QuantizationSearch(BayesianBitsConfig(...), CostConfig(...), first_layer="full", finetune_epochs=2)`` wraps the
model with the quantizers the config's registered method builds, runs its regulariser on the schedule, and exports
the result. `bb_lightning.BayesianBits` and `bb_lightning.BitPruning` are presets that only build the two configs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor

from .. import _validate as v
from .._registry import get_hook, method_for_config
from ..config import WrapConfig
from ..cost.facts import layer_costs, layer_metrics
from ..errors import BBConfigError
from ..export import MixedPrecisionConfig
from ..methods.base import RANGE_GROUPS
from ..wrap.swap import apply_plan, plan_layers
from . import export_hook, param_groups
from .distributed import check_strategy, drop_frozen_grads, keep_frozen_gates_in_graph
from .guard import NonFiniteGuard
from .mixin import check_penalty_reached
from .monitor import BitMonitor
from .schedule import SearchSchedule
from .search_defaults import Travel
from .state import CHECKPOINT_KEY, QuantizationState, example_input, get_state, resolve_root, root_attr_name, set_state


class QuantizationSearch(pl.Callback):
    """Learn mixed precision with the method whose config is ``method``; see the presets for the maths.

    In ``setup`` every selected ``nn.Conv1d``/``nn.Conv2d``/``nn.Linear`` of the LightningModule's model (timm's
    ``Conv2dSame``/``StdConv2d``/``ScaledStdConv2d`` included) gets weight and input quantizers, created eagerly,
    before the optimizers, checkpoint restore and DDP. In ``on_fit_start`` their parameters move into optimizer
    groups of their own (`bb_lightning.plugin.param_groups`). Add `bb_lightning.CostRegularizerMixin` to the
    LightningModule so the regulariser reaches the loss. Validation uses the deterministic bit widths; at the end of
    ``fit`` they are fixed and the `bb_lightning.MixedPrecisionConfig` is written (``callback.config``). A
    `bb_lightning.plugin.guard.NonFiniteGuard` is added to the Trainer unless it has one.

    Args:
        method: the method's config, e.g. `bb_lightning.methods.bayesian_bits.BayesianBitsConfig`; its type selects
            the registered method.
        cost: the method's regulariser config (default: that class with its defaults).
        include: module-name patterns (``fnmatch``, relative to the model) to quantize; ``None`` = all.
        exclude: module-name patterns to leave float.
        first_layer: ``"weights_only"`` (input stays float, counted at ``input_bits``), ``"full"`` or ``"float"``.
        last_layer: ``"no_prune"`` (quantized, never pruned), ``"full"`` or ``"float"``.
        quantize_activations: quantize every wrapped layer's input.
        input_bits: bits assumed for the float network input in the costs (ref: 8).
        fold_bn: fold a BatchNorm that follows a quantized conv/linear into it, so the folded weight is quantized:
            ``"none"``, ``"train"`` (training-time folding with batch statistics, Bayesian Bits spec 5.5) or
            ``"static"`` (running statistics folded once); see `bb_lightning.wrap.bn_fold`.
        warmup_epochs: epochs (may be fractional) at the initial bit widths without penalty.
        ramp_epochs: epochs over which the regulariser rises linearly from 0 to its strength.
        finetune_epochs: fix the bit widths for the last N epochs of ``fit`` and fine-tune weights and ranges;
            ``None`` (default): ``round(0.2 * max_epochs)``.
        group_lrs: learning rate per quantizer parameter group (``"gates"``, ``"ranges"``, ``"bits"``); a search
            group not given gets one derived from the run's length so its parameters can reach a decision
            (`bb_lightning.plugin.search_defaults`), other groups `bb_lightning.plugin.schedule.DEFAULT_GROUP_LRS`.
        export_path: where to write the config; default: see `bb_lightning.plugin.export_hook`.
        overwrite_export: replace an existing file instead of writing ``<name>-v1.json``.
        model_attr: attribute of the LightningModule holding the model; default ``model`` if present, else the module.
        input_size: per-sample input size for counting MACs, e.g. ``(3, 224, 224)``; default from
            ``example_input_array`` or timm's ``pretrained_cfg``.
        export_onnx: also write the deployable ONNX model (``model.onnx``) next to the config (`bb_lightning.deploy`).

    Raises:
        BBConfigError: an invalid argument; the message names it and the valid choices.
    """

    def __init__(
        self,
        method: Any,
        cost: Any = None,
        *,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        first_layer: str = "weights_only",
        last_layer: str = "no_prune",
        quantize_activations: bool = True,
        input_bits: int = 8,
        fold_bn: str = "none",
        warmup_epochs: float = 0.0,
        ramp_epochs: float = 0.0,
        finetune_epochs: int | None = None,
        group_lrs: Mapping[str, float] | None = None,
        export_path: str | None = None,
        overwrite_export: bool = False,
        model_attr: str | None = None,
        input_size: Sequence[int] | None = None,
        export_onnx: bool = False,
    ) -> None:
        super().__init__()
        entry = method_for_config(method)
        cost = entry.cost_config() if cost is None else cost
        if not isinstance(cost, entry.cost_config):
            raise BBConfigError(
                f"Method `{entry.name}` takes a `{entry.cost_config.__name__}` cost, got `{type(cost).__name__}`."
            )
        self.method, self.method_config, self.cost = entry.name, method, cost
        self.wrap = WrapConfig(
            include=include, exclude=exclude, first_layer=first_layer, last_layer=last_layer,
            quantize_activations=quantize_activations, input_bits=input_bits, fold_bn=fold_bn,
        )
        self.schedule = SearchSchedule(warmup_epochs, ramp_epochs, finetune_epochs, group_lrs or {})
        self.export_path = v.optional_path("export_path", export_path)
        self.overwrite_export = v.boolean("overwrite_export", overwrite_export)
        self.model_attr = v.optional_str("model_attr", model_attr)
        self.input_size = v.sizes("input_size", input_size)
        self.export_onnx = v.boolean("export_onnx", export_onnx)  # model.onnx next to the config (bb_lightning.deploy)
        #: The exported `MixedPrecisionConfig` once ``fit`` has ended.
        self.config: MixedPrecisionConfig | None = None
        #: Where the config was written.
        self.config_path: Path | None = None
        #: Logs the bit allocation (scalars, W&B objects, PNGs) and keeps its per-epoch history.
        self.monitor = BitMonitor()
        self._checked_penalty = False
        self._state: QuantizationState | None = None
        self._warm: bool | None = None  # whether the last training batch was in warm-up (None: none seen yet)
        self._pending_regularizer_state: dict[str, Any] | None = None
        self._layout: param_groups.Layout | None = None  # the quantizer groups of the current / resumed fit
        #: per search group (``"gates"``, ``"bits"``): how far its parameters travel to a decision (set by presets)
        self.search_travel: dict[str, Travel] = {}
        #: the user's argument that sets a range group's learning rate, for messages (presets: ``range_lr``)
        self.range_lr_arg = "group_lrs['{group}']"
        self._ranges_pending = False  # range groups whose rates wait for calibrated ranges (first optimizer step)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method)

    def state(self, pl_module: pl.LightningModule) -> QuantizationState:
        state = get_state(pl_module)
        if state is None:
            raise BBConfigError(f"`{type(pl_module).__name__}` has not been quantized by this callback yet.")
        return state

    # ----- set-up ------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_strategy(trainer)
        if stage == "fit":
            self.schedule.resolve_finetune(trainer.max_epochs)
        state = get_state(pl_module)
        if state is None:
            root_attr = root_attr_name(pl_module, self.model_attr)
            root = resolve_root(pl_module, root_attr)
            records = plan_layers(root, self.wrap, example_input(pl_module, root, self.input_size))
            modules = apply_plan(root, records, self.method, self.method_config)
            state = QuantizationState(
                self.method, self.method_config, self.wrap, self.cost, records, modules, root_attr, root
            )
            set_state(pl_module, state)
            if stage == "fit":
                self._on_new_state(trainer, state)
            n = sum(r.wrapped for r in records)
            rank_zero_info(f"bb_lightning: {self.method} quantizers on {n}/{len(records)} conv/linear layers.")
        else:
            state.check_same(pl_module, self.method, self.method_config, self.wrap)
            state.set_cost(self.cost)
        self._state = state
        if self._pending_regularizer_state is not None:
            state.regularizer.load_state_dict(self._pending_regularizer_state)
            self._pending_regularizer_state = None
        if not any(isinstance(cb, NonFiniteGuard) for cb in trainer.callbacks):
            trainer.callbacks.append(NonFiniteGuard())

    def _on_new_state(self, trainer: pl.Trainer, state: QuantizationState) -> None:
        """Once, when ``setup`` has created the quantizers for a fit (before a checkpoint restore): presets may
        adjust their initial values here."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._warm = None
        self.monitor.on_fit_start(trainer, self)
        self.schedule.check_run(trainer.max_epochs)
        state = self.state(pl_module)
        if state.frozen and trainer.ckpt_path is None:
            warnings.warn(
                "bb_lightning: the bit widths of this model are already fixed (a previous fit ended); this fit trains "
                "weights and ranges only.",
                stacklevel=2,
            )
        # before Lightning restores the optimizer state: the groups must match the checkpoint's
        resumed = trainer.ckpt_path is not None and self._layout is not None
        groups = param_groups.resolve_layout(self._layout, pl_module) if resumed else state.parameter_groups()
        params = [p for ps in groups.values() for p in ps]
        optimizer = param_groups.find_optimizer(trainer.optimizers, params, pl_module)
        travel = self.search_travel.get

        def rate(g: str) -> float:
            return self.schedule.resolve_lr(g, self.method, travel(g), trainer, optimizer, state.frozen)

        if param_groups.add_groups(optimizer, groups, rate):
            self._layout = param_groups.layout_of(groups, pl_module)
            self._ranges_pending = not resumed  # a resumed optimizer keeps the rates it had
        param_groups.shield_from_schedulers(trainer)

    def _resolve_range_lrs(self, trainer: pl.Trainer, state: QuantizationState) -> None:
        """Set each range group's learning rate from the run's length and the calibrated ranges (input ranges
        calibrate at the first training forward, so this runs once, before the first optimizer step)."""
        scales = state.range_scales()
        total = float(trainer.estimated_stepping_batches)
        for group in param_groups.tagged_groups(trainer.optimizers):
            name = group[param_groups.GROUP_TAG]
            if name not in RANGE_GROUPS.values():
                continue
            rate = self.schedule.resolve_range_lr(
                name, scales.get(name, []), total, self.range_lr_arg.format(group=name)
            )
            if rate is not None and rate != group["initial_lr"]:
                # rescale, so a scheduler that schedules these groups keeps its current factor
                group["lr"] *= rate / group["initial_lr"]
                group["initial_lr"] = rate

    def _freeze(self, trainer: pl.Trainer, state: QuantizationState) -> None:
        """Fix the bit widths and take the frozen parameters out of optimisation (no gradient, no optimizer state);
        they stay listed in their group, so a checkpoint taken at any point resumes into the same groups."""
        state.freeze()
        param_groups.drop_frozen_state(trainer.optimizers)

    # ----- training ----------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = self.state(pl_module)
        if not state.frozen and self.schedule.freeze_now(trainer.current_epoch, trainer.max_epochs):
            self._freeze(trainer, state)
            keep_frozen_gates_in_graph(trainer, state)
            rank_zero_info(f"bb_lightning: bit widths fixed at epoch {trainer.current_epoch}; fine-tuning weights.")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        state = self.state(pl_module)
        scale = self.schedule.penalty_scale(trainer.current_epoch, batch_idx, float(trainer.num_training_batches))
        state.regularizer.scale = scale
        warm = self.schedule.in_warmup(trainer.current_epoch, scale)
        if warm != self._warm and (warm or self._warm is not None):
            # warm-up: the bit widths stay at their initial values (no penalty, no updates); ranges still train.
            # Written only when entering/leaving warm-up, so LR schedules on these groups are left alone.
            for group in param_groups.tagged_groups(trainer.optimizers):
                group["lr"] = self.schedule.group_lr(group[param_groups.GROUP_TAG], group, warm)
        self._warm = warm

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.state(pl_module).constrain_()  # project bit widths etc. back into their bounds after the step

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        state = self.state(pl_module)
        if self._ranges_pending:
            self._ranges_pending = False
            self._resolve_range_lrs(trainer, state)
        drop_frozen_grads(state)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        state = self.state(pl_module)
        state.regularizer.update()  # e.g. BitPruning's dual ascent, once per training loss
        if not self._checked_penalty:
            check_penalty_reached(pl_module, state, self.cost.strength)
            self._checked_penalty = True

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.monitor.on_validation_epoch_end(trainer, pl_module, self.state(pl_module))

    # ----- end of fit --------------------------------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = self.state(pl_module)
        self._freeze(trainer, state)
        self.config = state.export()
        self._finish(trainer, state, *export_hook.log_dir_of(trainer))
        if self.export_onnx and trainer.is_global_zero and self.config_path is not None:
            model = resolve_root(pl_module, state.root_attr)  # bb_lightning.deploy.hooks.write_onnx_next_to
            write = get_hook("onnx_writer")
            write(self.config_path, model, self.config, example_input(pl_module, model, self.input_size))

    @rank_zero_only
    def _finish(self, trainer: pl.Trainer, state: QuantizationState, log_dir: Path, per_version: bool) -> None:
        assert self.config is not None
        run_dir = log_dir if per_version else None
        if self.export_path:
            path = Path(self.export_path)
        else:
            run_dir = run_dir or export_hook.new_run_dir(log_dir)
            path = run_dir / export_hook.DEFAULT_EXPORT_NAME
        self.config_path = export_hook.write_config(self.config, path, self.overwrite_export)
        export_hook.report(self.method, self.config, self.config_path)
        metrics = {f"bb_final/{k}": float(val) for k, val in self.config.totals.items()}
        metrics.update(layer_metrics(layer_costs(state.records, state.modules, self.wrap.input_bits)))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.monitor.on_fit_end(trainer, state, self.config_path, run_dir or export_hook.new_run_dir(log_dir))

    # ----- persistence -------------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.state(pl_module).to_dict()

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"checked_penalty": self._checked_penalty, "bit_history": self.monitor.state_dict()}
        if self._state is not None:
            out["regularizer"] = self._state.regularizer.state_dict()
        if self._layout is not None:
            out["param_groups"] = self._layout
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._checked_penalty = bool(state_dict.get("checked_penalty", False))
        self.monitor.load_state_dict(state_dict.get("bit_history"))
        self._layout = state_dict.get("param_groups")
        reg = state_dict.get("regularizer")
        if reg:
            if self._state is not None:
                self._state.regularizer.load_state_dict(reg)
            else:
                self._pending_regularizer_state = dict(reg)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        data = checkpoint.get(CHECKPOINT_KEY)
        state = get_state(pl_module)
        if data is None or state is None:
            return
        if [r["name"] for r in data["records"] if r["wrapped"]] != [r.name for r in state.records if r.wrapped]:
            raise BBConfigError(
                "The checkpoint was quantized on different layers than this run; check include/exclude and the "
                "first/last-layer policies."
            )
        if data.get("frozen") and not state.frozen:
            state.freeze()


__all__ = ["QuantizationSearch"]
