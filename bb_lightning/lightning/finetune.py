"""``FixedGateFinetune``: the fixed-gate fine-tuning stage after a search (Bayesian Bits spec 5.4).

In ``setup`` (before ``configure_optimizers``) the LightningModule's model becomes the fixed mixed-precision model
that a search found: every quantizer is replaced by a fixed-bit quantizer with the search's deterministic bit width,
range and channel mask (no gates, no regulariser), and BatchNorm folded during the search is folded statically from
its running statistics. The conversion is lossless: before any fine-tuning step, the model's evaluation logits equal
the searched model's. Only the weights, biases and ranges train; the ranges get their own optimizer group
(``range_lr``, no weight decay; with `TimmClassifier`'s ``optimizer: sgd`` they use Adam as in the reference).

The starting point is either a search checkpoint (a Lightning ``.ckpt`` written while a quantization callback was
active) or an exported `MixedPrecisionConfig` plus the searched weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from ..errors import BBConfigError
from ..export import MixedPrecisionConfig, apply_config
from ..methods.base import QuantizerBase
from ..wrap.bn_fold import unfold_bn_train
from ..wrap.layers import unwrap_layer
from .callback import _find_optimizers
from .optim import GROUP_TAG
from .state import CHECKPOINT_KEY, STATE_ATTR, QuantizationState, get_state, resolve_root, root_attr_name

_DONE = "_bb_finetune_config"


def _load_file(path: str | os.PathLike, what: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise BBConfigError(f"`{what}`: no such file {str(path)!r}.")
    # a Lightning checkpoint written by the user's own run (it holds hyper-parameters, not only tensors)
    data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, dict):
        raise BBConfigError(f"`{what}`: {path} holds a {type(data).__name__}, not a checkpoint or state dict.")
    return data


class FixedGateFinetune(pl.Callback):
    """Fine-tune the fixed mixed-precision model found by a search (spec 5.4).

    Args:
        search_checkpoint: a Lightning checkpoint of the search (any epoch; its gates are read with the
            deterministic evaluation rule).
        config: instead, an exported `MixedPrecisionConfig` JSON file ...
        weights: ... and the searched weights: a Lightning checkpoint of the search or a plain state dict of the
            model (quantizer entries are ignored). Without it the model's current weights are used.
        range_lr: learning rate of the ranges (reference: 1e-4 with Adam).
        model_attr: attribute of the LightningModule holding the model; default ``model`` if present, else the module.
        export_onnx: write the fine-tuned model as ONNX (``<log_dir>/model.onnx``) at the end of fit.

    Attributes:
        config: the `MixedPrecisionConfig` the model was fixed to (after ``setup``).

    Raises:
        BBConfigError: neither or both starting points, missing files, or a model that does not match them.
    """

    def __init__(
        self,
        search_checkpoint: str | None = None,
        config: str | None = None,
        weights: str | None = None,
        range_lr: float = 1e-4,
        model_attr: str | None = None,
        export_onnx: bool = False,
    ) -> None:
        super().__init__()
        self.export_onnx = bool(export_onnx)  # write <log_dir>/model.onnx at the end of fit (bb_lightning.deploy)
        if (search_checkpoint is None) == (config is None):
            raise BBConfigError(
                "FixedGateFinetune needs exactly one starting point: `search_checkpoint` (a .ckpt of the search) or "
                f"`config` (an exported MixedPrecisionConfig); got search_checkpoint={search_checkpoint!r}, "
                f"config={config!r}."
            )
        if weights is not None and config is None:
            raise BBConfigError("`weights` goes with `config`; a `search_checkpoint` already holds the weights.")
        if isinstance(range_lr, bool) or not isinstance(range_lr, (int, float)) or not 0 < range_lr < float("inf"):
            raise BBConfigError(f"Expected argument `range_lr` to be a float > 0, but got {range_lr!r}.")
        self.search_checkpoint, self.config_path, self.weights = search_checkpoint, config, weights
        self.range_lr = float(range_lr)
        self.model_attr = model_attr
        self.config: MixedPrecisionConfig | None = None

    # ----- conversion ----------------------------------------------------------------------------------------
    def _from_checkpoint(self, pl_module: pl.LightningModule, root: nn.Module) -> MixedPrecisionConfig:
        ckpt = _load_file(self.search_checkpoint, "search_checkpoint")  # type: ignore[arg-type]
        data = ckpt.get(CHECKPOINT_KEY)
        if data is None or "state_dict" not in ckpt:
            raise BBConfigError(
                f"`search_checkpoint`: {self.search_checkpoint} is not a checkpoint of a search (it has no "
                f"'{CHECKPOINT_KEY}' entry); use `config` + `weights` for an exported config."
            )
        if get_state(pl_module) is not None:
            raise BBConfigError("FixedGateFinetune needs a float model; this one is already quantized by a callback.")
        state = QuantizationState.rebuild(pl_module, data)
        try:
            pl_module.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            raise BBConfigError(
                f"`search_checkpoint` {self.search_checkpoint} does not fit this model: {err}"
            ) from None
        state.freeze()
        config = state.export()
        for rec in state.records:  # back to the float model with the searched weights
            m = state.modules.get(rec.name)
            if m is not None:
                unwrap_layer(m)
            if rec.bn is not None and rec.fold_bn == "train":
                unfold_bn_train(root, rec.name)
        pl_module.__dict__.pop(STATE_ATTR, None)
        return config

    def _from_config(self, root: nn.Module) -> MixedPrecisionConfig:
        config = MixedPrecisionConfig.load(self.config_path, model=root)  # type: ignore[arg-type]
        if self.weights is not None:
            data = _load_file(self.weights, "weights")
            sd = data
            if isinstance(data.get("state_dict"), dict):  # a Lightning checkpoint: keys of the LightningModule
                prefix = f"{self._root_attr_name}." if self._root_attr_name else ""
                sd = {k[len(prefix):]: v for k, v in data["state_dict"].items() if k.startswith(prefix)}
            sd = {k: v for k, v in sd.items() if "_quantizer." not in k}
            missing, unexpected = root.load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise BBConfigError(
                    f"`weights` {self.weights} does not fit the model: missing {missing[:10]}, unexpected "
                    f"{unexpected[:10]}."
                )
        return config

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if pl_module.__dict__.get(_DONE) is None:
            self._root_attr_name = root_attr_name(pl_module, self.model_attr)
            root = resolve_root(pl_module, self._root_attr_name)
            config = self._from_checkpoint(pl_module, root) if self.search_checkpoint else self._from_config(root)
            apply_config(root, config)
            pl_module.__dict__[_DONE] = config
            t = config.totals
            rank_zero_info(
                f"bb_lightning: fine-tuning the fixed model ({100 * t['relative_bops']:.3f}% relative BOPs, "
                f"{len(config.model.get('bn_fold', {}))} BatchNorm folded statically)."
            )
        self.config = pl_module.__dict__[_DONE]
        if stage == "fit":
            self._patch_configure_optimizers(pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # every rank asks (it broadcasts under DDP)
        if self.export_onnx and trainer.is_global_zero:
            from ..deploy.hooks import example_input_of, write_onnx_new

            root = resolve_root(pl_module, root_attr_name(pl_module, self.model_attr))
            write_onnx_new(log_dir / "model.onnx", root, None, example_input_of(pl_module, root))

    # ----- optimizer groups --------------------------------------------------------------------------------------
    def _patch_configure_optimizers(self, pl_module: pl.LightningModule) -> None:
        pl_module.__dict__["_bb_finetune"] = self  # the callback of the current fit sets the range LR
        original = pl_module.configure_optimizers
        if getattr(original, "_bb_finetune_patched", False):
            return

        def configure_optimizers() -> Any:
            result = original()
            optimizers = _find_optimizers(result)
            if not optimizers:
                raise BBConfigError(f"`{type(pl_module).__name__}.configure_optimizers` returned no torch optimizer.")
            range_lr = pl_module.__dict__["_bb_finetune"].range_lr
            # learned ranges only (min-max quantizers of BitPruning results have none)
            ranges = [
                p for m in pl_module.modules() if isinstance(m, QuantizerBase)
                for p in m.parameter_groups().get("ranges", [])
            ]
            ids = {id(p) for p in ranges}
            opt = optimizers[0]
            for group in opt.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in ids]
            opt.add_param_group(
                {"params": ranges, "lr": range_lr, "initial_lr": range_lr, "weight_decay": 0.0, GROUP_TAG: "ranges"}
            )
            return result

        configure_optimizers._bb_finetune_patched = True  # type: ignore[attr-defined]
        pl_module.configure_optimizers = configure_optimizers  # type: ignore[method-assign]


__all__ = ["FixedGateFinetune"]
