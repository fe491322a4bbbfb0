"""``FixedGateFinetune``: the fixed-gate fine-tuning stage after a search (Bayesian Bits spec 5.4).

In ``setup`` (before ``configure_optimizers``) the LightningModule's model becomes the fixed mixed-precision model
that a search found: every quantizer is replaced by a fixed-bit quantizer with the search's deterministic bit width,
range and channel mask (no gates, no regulariser), and BatchNorm folded during the search is folded statically from
its running statistics. The conversion is lossless: before any fine-tuning step, the model's evaluation logits equal
the searched model's. Only the weights, biases and ranges train; the ranges get their own optimizer group
(``range_lr``, no weight decay), added in ``on_fit_start`` by the same helper as the search callback's groups
(`bb_lightning.plugin.param_groups`) and persisted by parameter name. With ``ranges="data"`` only the bit widths
and channel masks are kept (ranges calibrated from the data, BatchNorm folded as the search folded it), to train
the allocation from fresh weights; that conversion is not lossless.

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

from .. import _validate as v
from .._registry import get_hook
from ..errors import BBConfigError
from ..export import MixedPrecisionConfig, apply_config
from ..export.apply import RANGES
from ..methods.base import RANGE_GROUPS, QuantizerBase
from ..wrap.bn_fold import unfold_bn_train
from ..wrap.layers import unwrap_layer
from . import param_groups
from .state import (
    CHECKPOINT_KEY,
    STATE_ATTR,
    QuantizationState,
    example_input,
    get_state,
    resolve_root,
    root_attr_name,
)

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
        ranges: ``"config"``: start from the searched ranges (fine-tuning the searched weights); ``"data"``: keep
            only the bit widths and pruned channels and calibrate the ranges from the model's own weights and first
            training batch, to train the allocation from freshly initialised weights (`apply_config`).
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
        ranges: str = "config",
    ) -> None:
        super().__init__()
        if ranges not in RANGES:
            raise BBConfigError(f"FixedGateFinetune: `ranges` must be one of {RANGES}, got {ranges!r}.")
        self.ranges = ranges
        self.export_onnx = bool(export_onnx)  # write <log_dir>/model.onnx at the end of fit (bb_lightning.deploy)
        if (search_checkpoint is None) == (config is None):
            raise BBConfigError(
                "FixedGateFinetune needs exactly one starting point: `search_checkpoint` (a .ckpt of the search) or "
                f"`config` (an exported MixedPrecisionConfig); got search_checkpoint={search_checkpoint!r}, "
                f"config={config!r}."
            )
        if weights is not None and config is None:
            raise BBConfigError("`weights` goes with `config`; a `search_checkpoint` already holds the weights.")
        self.search_checkpoint, self.config_path, self.weights = search_checkpoint, config, weights
        self.range_lr = v.positive("range_lr", range_lr)
        self.model_attr = v.optional_str("model_attr", model_attr)
        self.config: MixedPrecisionConfig | None = None
        self._layout: param_groups.Layout | None = None

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
            apply_config(root, config, ranges=self.ranges)
            pl_module.__dict__[_DONE] = config
            t = config.totals
            rank_zero_info(
                f"bb_lightning: fine-tuning the fixed model ({100 * t['relative_bops']:.3f}% relative BOPs, "
                f"{len(config.model.get('bn_fold', {}))} BatchNorm folded "
                f"{'statically' if self.ranges == 'config' else 'as in the search'}, ranges from "
                f"{'the search' if self.ranges == 'config' else 'the data'})."
            )
        self.config = pl_module.__dict__[_DONE]

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # every rank asks (it broadcasts under DDP)
        if self.export_onnx and trainer.is_global_zero:
            root = resolve_root(pl_module, root_attr_name(pl_module, self.model_attr))
            write = get_hook("onnx_writer_new")  # bb_lightning.deploy.hooks.write_onnx_new, never replaces a file
            write(log_dir / "model.onnx", root, None, example_input(pl_module, root, None))

    # ----- optimizer groups --------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The learned ranges (min-max quantizers of BitPruning results have none) get their own group."""
        if trainer.ckpt_path is not None and self._layout is not None:
            groups = param_groups.resolve_layout(self._layout, pl_module)
        else:
            groups = {"ranges": [  # weight and input ranges alike: one rate, as in the reference's fine-tuning
                p for m in pl_module.modules() if isinstance(m, QuantizerBase)
                for name, ps in m.parameter_groups().items() if name in RANGE_GROUPS.values() for p in ps
            ]}
        optimizer = param_groups.find_optimizer(trainer.optimizers, groups["ranges"], pl_module)
        if param_groups.add_groups(optimizer, groups, lambda name: self.range_lr):
            self._layout = param_groups.layout_of(groups, pl_module)
        param_groups.shield_from_schedulers(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {} if self._layout is None else {"param_groups": self._layout}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._layout = state_dict.get("param_groups")


__all__ = ["FixedGateFinetune"]
