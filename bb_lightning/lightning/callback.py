"""``QuantizationCallback``: method-agnostic Lightning glue (wrap in ``setup``, optimizer groups, logging, export).

A method's public callback (e.g. `bb_lightning.BayesianBits`) only builds its method config and calls this
class's constructor.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor, nn

from .._registry import get_method
from ..config import WrapConfig
from ..errors import BBConfigError
from ..cost.report import layer_costs
from ..export import MixedPrecisionConfig
from ..wrap.swap import apply_plan, plan_layers
from .monitor import BitMonitor
from .distributed import check_strategy, drop_frozen_grads, keep_frozen_gates_in_graph
from .finite import NonFiniteGuard
from .state import (
    CHECKPOINT_KEY,
    QuantizationState,
    _init_fields,
    get_state,
    resolve_root,
    root_attr_name,
    set_state,
)

DEFAULT_EXPORT_NAME = "mixed_precision_config.json"
_GROUP_TAG = "bb_lightning"


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise BBConfigError(f"Expected argument `{name}` to be a float > 0, but got {value!r}.")
    return float(value)


def _find_optimizers(obj: Any) -> list[torch.optim.Optimizer]:
    if isinstance(obj, torch.optim.Optimizer):
        return [obj]
    if isinstance(obj, dict):
        return _find_optimizers(obj.get("optimizer"))
    if isinstance(obj, (list, tuple)):
        return [o for item in obj for o in _find_optimizers(item)]
    return []


def _unique_path(path: Path) -> Path:
    """``path``, or ``stem-v1.json``, ``stem-v2.json``, ... if it exists: an export never replaces an older one."""
    if not path.exists():
        return path
    i = 1
    while (candidate := path.with_name(f"{path.stem}-v{i}{path.suffix}")).exists():
        i += 1
    return candidate


class QuantizationCallback(pl.Callback):
    """Wraps the LightningModule's model with quantizers of ``method`` in ``setup``; see `BayesianBits`."""

    def __init__(
        self,
        method: str,
        method_config: Any,
        wrap: WrapConfig,
        cost: Any,
        gate_lr: float = 1e-3,
        range_lr: float = 1e-3,
        finetune_epochs: int = 0,
        export_path: str | None = None,
        overwrite_export: bool = False,
        model_attr: str | None = None,
        input_size: Sequence[int] | None = None,
        group_lrs: Mapping[str, float] | None = None,
        warmup_epochs: float = 0.0,
        ramp_epochs: float = 0.0,
        export_onnx: bool = False,
    ) -> None:
        super().__init__()
        entry = get_method(method)
        if not isinstance(method_config, entry.config):
            raise BBConfigError(
                f"Method `{method}` takes a `{entry.config.__name__}`, got `{type(method_config).__name__}`."
            )
        cost_cls = entry.cost_classes()[0]
        if not isinstance(cost, cost_cls):
            raise BBConfigError(f"Method `{method}` takes a `{cost_cls.__name__}` cost, got `{type(cost).__name__}`.")
        self.method, self.method_config, self.wrap, self.cost = method, method_config, wrap, cost
        self.gate_lr = _positive("gate_lr", gate_lr)
        self.range_lr = _positive("range_lr", range_lr)
        #: learning rate per quantizer parameter group name (``"gates"``, ``"ranges"``, ``"bits"``, ...)
        self.group_lrs = {"gates": self.gate_lr, "ranges": self.range_lr}
        for name, lr in (group_lrs or {}).items():
            self.group_lrs[str(name)] = _positive(f"group_lrs[{name!r}]", lr)
        if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
            raise BBConfigError(f"Expected argument `finetune_epochs` to be an int >= 0, but got {finetune_epochs!r}.")
        self.finetune_epochs = finetune_epochs
        for name, value in (("warmup_epochs", warmup_epochs), ("ramp_epochs", ramp_epochs)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise BBConfigError(f"Expected argument `{name}` to be a number of epochs >= 0, but got {value!r}.")
        self.warmup_epochs, self.ramp_epochs = float(warmup_epochs), float(ramp_epochs)
        if export_path is not None and not isinstance(export_path, (str, os.PathLike)):
            raise BBConfigError(f"Expected argument `export_path` to be a file path or None, but got {export_path!r}.")
        self.export_path = export_path
        if not isinstance(overwrite_export, bool):
            raise BBConfigError(f"Expected argument `overwrite_export` to be true or false, got {overwrite_export!r}.")
        self.overwrite_export = overwrite_export
        self.export_onnx = bool(export_onnx)  # write model.onnx next to the config (bb_lightning.deploy)
        if model_attr is not None and not isinstance(model_attr, str):
            raise BBConfigError(f"Expected argument `model_attr` to be a str or None, but got {model_attr!r}.")
        self.model_attr = model_attr
        if input_size is not None:
            if not isinstance(input_size, Sequence) or not all(isinstance(v, int) and v > 0 for v in input_size):
                raise BBConfigError(
                    f"Expected argument `input_size` to be per-sample sizes like (3, 224, 224), but got {input_size!r}."
                )
        self.input_size = None if input_size is None else tuple(input_size)
        #: The exported `MixedPrecisionConfig` once ``fit`` has ended.
        self.config: MixedPrecisionConfig | None = None
        #: Where the config was written.
        self.config_path: Path | None = None
        self._checked_penalty = False
        self._state: QuantizationState | None = None
        self._warm: bool | None = None  # whether the last training batch was in warm-up (None: none seen yet)
        self._pending_regularizer_state: dict[str, Any] | None = None
        #: Logs the bit allocation (scalars, W&B objects, PNGs) and keeps its per-epoch history.
        self.monitor = BitMonitor()
        self._finite = NonFiniteGuard()

    # ----- helpers -----------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method)

    def _example_input(self, pl_module: pl.LightningModule, root: nn.Module) -> Tensor:
        device = next(root.parameters()).device
        if self.input_size is not None:
            return torch.zeros((1, *self.input_size), device=device)
        example = getattr(pl_module, "example_input_array", None)
        if isinstance(example, Tensor):
            return example[:1].to(device)
        cfg = getattr(root, "pretrained_cfg", None) or {}
        if "input_size" in cfg:
            return torch.zeros((1, *cfg["input_size"]), device=device)
        raise BBConfigError(
            f"Cannot tell the input size of `{type(pl_module).__name__}` to count MACs. HINT: pass "
            "`input_size=(C, H, W)` to the callback or set `self.example_input_array` in your LightningModule."
        )

    def state(self, pl_module: pl.LightningModule) -> QuantizationState:
        state = get_state(pl_module)
        if state is None:
            raise BBConfigError(f"`{type(pl_module).__name__}` has not been quantized by this callback yet.")
        return state

    # ----- lifecycle ---------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_strategy(trainer)
        state = get_state(pl_module)
        if state is None:
            root_attr = root_attr_name(pl_module, self.model_attr)
            root = resolve_root(pl_module, root_attr)
            records = plan_layers(root, self.wrap, self._example_input(pl_module, root))
            modules = apply_plan(root, records, self.method, self.method_config)
            state = QuantizationState(
                self.method, self.method_config, self.wrap, self.cost, records, modules, root_attr, root
            )
            set_state(pl_module, state)
            n = sum(r.wrapped for r in records)
            rank_zero_info(f"bb_lightning: {self.method} quantizers on {n}/{len(records)} conv/linear layers.")
        else:
            self._check_same_quantization(pl_module, state)
            state.set_cost(self.cost)
        self._state = state
        if self._pending_regularizer_state is not None:
            state.regularizer.load_state_dict(self._pending_regularizer_state)
            self._pending_regularizer_state = None
        if stage == "fit":
            self._patch_configure_optimizers(pl_module, state)

    def _check_same_quantization(self, pl_module: pl.LightningModule, state: QuantizationState) -> None:
        """An already-quantized module keeps its layers: refuse a callback that would quantize it differently."""
        if state.method != self.method:
            raise BBConfigError(
                f"`{type(pl_module).__name__}` is already quantized with `{state.method}`, not `{self.method}`."
            )
        mine = {**_init_fields(self.method_config), **_init_fields(self.wrap)}
        theirs = {**_init_fields(state.method_config), **_init_fields(state.wrap)}
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        if diff:
            raise BBConfigError(
                f"`{type(pl_module).__name__}` is already quantized with different settings "
                + ", ".join(f"{k}={theirs.get(k)!r} (this callback: {mine[k]!r})" for k in diff)
                + ". Use the same settings, or start from a fresh model."
            )

    def _patch_configure_optimizers(self, pl_module: pl.LightningModule, state: QuantizationState) -> None:
        pl_module.__dict__["_bb_callback"] = self  # the callback of the current fit sets the group LRs
        original = pl_module.configure_optimizers
        if getattr(original, "_bb_patched", False):
            return  # patched by an earlier fit
        pl_module.__dict__["_bb_configure_optimizers"] = original

        def configure_optimizers() -> Any:
            result = pl_module.__dict__["_bb_configure_optimizers"]()
            optimizers = _find_optimizers(result)
            if not optimizers:
                raise BBConfigError(
                    f"`{type(pl_module).__name__}.configure_optimizers` returned no torch optimizer; the quantizer "
                    "gates and ranges need one."
                )
            pl_module.__dict__["_bb_callback"]._add_param_groups(optimizers[0], get_state(pl_module))
            return result

        configure_optimizers._bb_patched = True  # type: ignore[attr-defined]
        pl_module.configure_optimizers = configure_optimizers  # type: ignore[method-assign]

        original_step = pl_module.lr_scheduler_step

        def lr_scheduler_step(scheduler: Any, metric: Any) -> None:
            # The user's schedulers were built before the quantizer groups existed: step them on exactly the
            # groups they know, so gate/range learning rates stay constant (reference: MNIST/CIFAR recipes).
            optimizer = getattr(scheduler, "optimizer", None)
            groups = getattr(optimizer, "param_groups", None)
            ours = [g for g in groups if g.get(_GROUP_TAG)] if groups is not None else []
            if getattr(scheduler, "schedules_quantizer_groups", False):
                ours = []  # a scheduler that asks for them (e.g. the reference's ImageNet MultiStepLR) keeps them
            if ours:
                groups[:] = [g for g in groups if not g.get(_GROUP_TAG)]
            try:
                original_step(scheduler, metric)
            finally:
                if ours:
                    groups.extend(ours)

        pl_module.lr_scheduler_step = lr_scheduler_step  # type: ignore[method-assign]

    def _add_param_groups(self, optimizer: torch.optim.Optimizer, state: QuantizationState) -> None:
        """Move every quantizer parameter into its own group(s): own LR, no weight decay (spec 3.8)."""
        groups = state.parameter_groups()
        ids = {id(p) for q in state.quantizers() for p in q.parameters()}
        for group in optimizer.param_groups:
            if group.get(_GROUP_TAG):
                return  # already added (e.g. configure_optimizers called twice)
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        unknown = sorted(set(groups) - set(self.group_lrs))
        if unknown:
            raise BBConfigError(
                f"Method `{self.method}` has quantizer parameter groups {unknown} without a learning rate; pass "
                f"`group_lrs={{{unknown[0]!r}: ...}}` (known: {sorted(self.group_lrs)})."
            )
        if isinstance(optimizer, torch.optim.SGD):
            warnings.warn(
                f"bb_lightning: your optimizer `{type(optimizer).__name__}` is not adaptive; gate and bitlength "
                "gradients differ in scale by orders of magnitude between layers, and only an Adam-type optimizer "
                "moves them at a useful speed (Bayesian Bits spec 2.7, BitPruning spec R2).",
                stacklevel=2,
            )
        for name, params in groups.items():
            # frozen parameters (requires_grad=False, no gradient, no state) stay in their group, so the optimizer
            # has the same groups however a checkpoint was taken (before or after the bit widths were fixed)
            lr = self.group_lrs[name]
            group = {"params": params, "lr": lr, "initial_lr": lr, "weight_decay": 0.0, _GROUP_TAG: name}
            optimizer.add_param_group(group)

    def _freeze(self, trainer: pl.Trainer, state: QuantizationState) -> None:
        """Fix the bit widths and take the now-frozen parameters out of optimisation: ``requires_grad=False``, no
        gradient and no optimizer state (optimizers skip parameters without a gradient). They stay listed in their
        group, so a checkpoint taken at any point resumes into the same optimizer groups."""
        state.freeze()
        for optimizer in trainer.optimizers:
            # an optimizer that wraps others (e.g. `SplitOptimizer`) keeps the state in the inner ones
            for inner in getattr(optimizer, "optimizers", None) or [optimizer]:
                for group in inner.param_groups:
                    if not group.get(_GROUP_TAG):
                        continue
                    for p in group["params"]:
                        if not p.requires_grad:
                            inner.state.pop(p, None)
                            p.grad = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._warm = None
        self.monitor.on_fit_start(trainer, self)
        if self.finetune_epochs:
            max_epochs = trainer.max_epochs
            if max_epochs is None or max_epochs < 1:
                raise BBConfigError(
                    f"`finetune_epochs={self.finetune_epochs}` counts back from `Trainer(max_epochs=...)`, but this "
                    f"Trainer has max_epochs={max_epochs} (e.g. training by `max_steps`). Set max_epochs, or "
                    "finetune_epochs=0."
                )
            if self.finetune_epochs >= max_epochs:
                warnings.warn(
                    f"bb_lightning: finetune_epochs={self.finetune_epochs} >= max_epochs={max_epochs}: the gates are "
                    "fixed from the first epoch and nothing is searched.",
                    stacklevel=2,
                )
        if self.state(pl_module).frozen and trainer.ckpt_path is None:
            warnings.warn(
                "bb_lightning: the gates of this model are already fixed (a previous fit ended); this fit trains "
                "weights and ranges only.",
                stacklevel=2,
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = self.state(pl_module)
        if self.finetune_epochs and not state.frozen and trainer.max_epochs:
            if trainer.current_epoch >= trainer.max_epochs - self.finetune_epochs:
                self._freeze(trainer, state)
                keep_frozen_gates_in_graph(trainer, state)
                rank_zero_info(f"bb_lightning: gates fixed at epoch {trainer.current_epoch}; fine-tuning weights/ranges.")
        for q in state.quantizers():
            q.refresh_host_state()

    def schedule_scale(self, epoch: int, batch_idx: int, num_batches: float) -> float:
        """The regulariser's schedule multiplier: 0 during warm-up, a linear ramp to 1, then 1."""
        if not (self.warmup_epochs or self.ramp_epochs):
            return 1.0
        t = epoch + (batch_idx / num_batches if 0 < num_batches < float("inf") else 0.0)
        if t < self.warmup_epochs:
            return 0.0
        if self.ramp_epochs and t < self.warmup_epochs + self.ramp_epochs:
            return (t - self.warmup_epochs) / self.ramp_epochs
        return 1.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._finite.batch_start(batch)
        state = self.state(pl_module)
        scale = self.schedule_scale(trainer.current_epoch, batch_idx, float(trainer.num_training_batches))
        state.regularizer.scale = scale
        warm = scale == 0.0 and trainer.current_epoch < self.warmup_epochs
        if warm != self._warm and (warm or self._warm is not None):
            # warm-up: the bit widths stay at their initial values (no penalty, no updates); ranges still train.
            # Written only when entering/leaving warm-up, so LR schedules on these groups are left alone.
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    name = group.get(_GROUP_TAG)
                    if name and name != "ranges":
                        group["lr"] = 0.0 if warm else group.get("initial_lr", self.group_lrs[name])
        self._warm = warm

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.state(pl_module).constrain_()  # project bit widths etc. back into their bounds after the step

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        state = self.state(pl_module)
        self._finite.check_gradients(trainer, pl_module, state)
        drop_frozen_grads(state)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        self._finite.check(trainer, pl_module, self.state(pl_module), loss)
        if self._checked_penalty:
            return
        state = self.state(pl_module)
        if state.penalty_calls == 0 and self.cost.strength > 0 and not state.frozen:
            from .mixin import CostRegularizerMixin

            if isinstance(pl_module, CostRegularizerMixin):
                raise BBConfigError(
                    f"The quantization regulariser never reached the loss of `{type(pl_module).__name__}`. It has "
                    "CostRegularizerMixin, so either `auto_quantization_penalty` is False (add "
                    "`self.quantization_penalty()` to your loss) or training_step returned something the mixin "
                    "cannot add to (return a loss tensor or a dict with 'loss')."
                )
            raise BBConfigError(
                f"The quantization regulariser never reached the loss of `{type(pl_module).__name__}`, so the search "
                "would optimise nothing. HINT: add `bb_lightning.CostRegularizerMixin` to your LightningModule "
                "(`class Model(CostRegularizerMixin, LightningModule)`), or add `self.quantization_penalty()` to the "
                "loss your training_step returns."
            )
        self._checked_penalty = True

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.monitor.on_validation_epoch_end(trainer, pl_module, self.state(pl_module))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = self.state(pl_module)
        self._freeze(trainer, state)
        self.config = state.export()
        # `trainer.log_dir` broadcasts under DDP, so every rank must ask for it, not only rank 0
        root = Path(trainer.log_dir or trainer.default_root_dir)
        path = Path(self.export_path) if self.export_path else root / DEFAULT_EXPORT_NAME
        self._report(trainer, state, path, root)
        if self.export_onnx and trainer.is_global_zero and self.config_path is not None:
            from ..deploy.hooks import write_onnx_next_to

            model = resolve_root(pl_module, state.root_attr)
            write_onnx_next_to(self.config_path, model, self.config, self._example_input(pl_module, model))

    @rank_zero_only
    def _report(self, trainer: pl.Trainer, state: QuantizationState, path: Path, log_dir: Path) -> None:
        assert self.config is not None
        while True:
            target = path if self.overwrite_export else _unique_path(path)
            try:
                self.config_path = self.config.save(target, overwrite=self.overwrite_export)
                break
            except FileExistsError:  # another run took the name meanwhile: try the next version
                continue
        print(f"\nbb_lightning: learned mixed-precision configuration ({self.method})\n{self.config.table()}")
        print(f"bb_lightning: exported to {self.config_path}")
        metrics = {f"bb_final/{k}": float(v) for k, v in self.config.totals.items()}
        costs = layer_costs(state.records, state.modules, self.wrap.input_bits)
        total_bops = sum(c.bops for c in costs) or 1.0
        for c in costs:
            metrics[f"bb_layers/{c.name}/weight_bits"] = float(min(c.w_bits, 32))
            metrics[f"bb_layers/{c.name}/input_bits"] = float(min(c.a_bits, 32))
            metrics[f"bb_layers/{c.name}/kept_channels"] = float(c.kept)
            metrics[f"bb_layers/{c.name}/bops_share"] = c.bops / total_bops
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.monitor.on_fit_end(trainer, state, self.config_path, log_dir)

    # ----- persistence -------------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.state(pl_module).to_dict()

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"checked_penalty": self._checked_penalty, "bit_history": self.monitor.state_dict()}
        if self._state is not None:
            out["regularizer"] = self._state.regularizer.state_dict()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._checked_penalty = bool(state_dict.get("checked_penalty", False))
        self.monitor.load_state_dict(state_dict.get("bit_history"))
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


__all__ = ["QuantizationCallback"]
