"""Turn a float model into the fixed mixed-precision model an exported config describes."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import BBConfigError
from ..methods.fixed import FixedMinMaxQuantizer, FixedQuantizer
from ..wrap.adapters import get_adapter
from ..wrap.bn_fold import FoldedBatchNorm, fold_bn_static, fold_bn_train
from ..wrap.layers import wrap_layer
from .check import check_model
from .config import MixedPrecisionConfig


#: where `apply_config` takes the quantization ranges from
RANGES = ("config", "data")


def _fixed_quantizer(
    role: str, spec: dict, keep: torch.Tensor | None = None, ranges: str = "config", layer: str = ""
) -> nn.Module:
    """The fixed quantizer one tensor entry of the config describes (symmetric or min-max grid)."""
    if ranges == "data":
        if spec.get("grid", "symmetric") != "symmetric":
            raise BBConfigError(
                f"apply_config(ranges='data') re-calibrates symmetric grids only, but the {role} of layer "
                f"`{layer}` uses the `{spec['grid']}` grid; use ranges='config'."
            )
        return FixedQuantizer(role, spec["bits"], spec["signed"], None, keep)  # type: ignore[arg-type]
    if spec.get("grid", "symmetric") == "minmax":
        bits = torch.tensor(spec["channel_bits"]) if "channel_bits" in spec else spec["bits"]
        if "channel_ranges" in spec:
            ranges = torch.tensor(spec["channel_ranges"], dtype=torch.float32)
            lo, hi = ranges[:, 0], ranges[:, 1]
        else:
            lo, hi = spec["range"]
        return FixedMinMaxQuantizer(role, bits, lo, hi)  # type: ignore[arg-type]
    return FixedQuantizer(role, spec["bits"], spec["signed"], float(spec["range"][1]), keep)  # type: ignore[arg-type]


def apply_config(model: nn.Module, config: MixedPrecisionConfig | str, ranges: str = "config") -> nn.Module:
    """Quantize ``model`` in place with fixed bit widths, ranges and channel masks from ``config``; returns it.

    ``ranges="data"`` keeps the bit widths and channel masks but not the searched ranges: as in the uniform
    baselines, each weight quantizer takes its range from the model's weight now (all-zero weights, e.g. behind a
    zero-initialised BatchNorm, at the first training step), each input quantizer from its first training-mode
    input, and both learn it from there; the BatchNorms the search folded for training (``fold_bn="train"``) are
    folded the same way, so they keep training. Use it to train the searched allocation from freshly initialised
    weights, whose scale the searched ranges do not fit (symmetric grids only: Bayesian Bits and uniform configs).

    ``model`` must have the architecture the config was exported from and should carry the trained float weights
    (the searched model's state dict keeps every original key, so ``model.load_state_dict(sd, strict=False)``
    works). If the config says the search folded BatchNorm into some layers (``config.model["bn_fold"]``), those
    pairs are folded statically first (`bb_lightning.wrap.bn_fold.fold_bn_static`, from the model's running
    statistics), so the fixed layers quantize the same folded weights. The result has no gates: each layer is a
    fixed-bit fake-quantized layer whose outputs equal the searched model's deterministic (evaluation) outputs.
    """
    if ranges not in RANGES:
        raise BBConfigError(f"apply_config: `ranges` must be one of {RANGES}, got {ranges!r}.")
    if not isinstance(config, MixedPrecisionConfig):
        config = MixedPrecisionConfig.load(config)
    check_model(model, config)
    folds = config.model.get("bn_fold") or {}
    modules = dict(model.named_modules())
    unfolded = [
        f["bn"]
        for f in folds.values()
        if f["mode"] == "static" and not isinstance(modules.get(f["bn"]), FoldedBatchNorm)
    ]
    # searched weights that already contain those BatchNorms cannot take a fold of fresh statistics (fresh weights can)
    if unfolded and ranges == "config":
        raise BBConfigError(
            f"The config comes from a search with `fold_bn='static'`, whose weights already contain the BatchNorms "
            f"{unfolded[:5]}. Fold the fresh model first (`bb_lightning.wrap.bn_fold.fold_pairs(model, pairs, "
            "'static')`), then load the searched weights, then call apply_config."
        )
    for layer, fold in folds.items():
        if ranges == "data" and fold["mode"] == "train":
            fold_bn_train(model, layer, fold["bn"])
        else:
            fold_bn_static(model, layer, fold["bn"])
    modules = dict(model.named_modules())
    for name, layer in config.layers.items():
        if not layer["quantized"]:
            continue
        m = modules[name]
        device = m.weight.device
        keep = None
        if layer["kept_channels"] is not None:
            keep = torch.zeros(layer["weight_shape"][0], dtype=torch.bool, device=device)
            keep[torch.tensor(layer["kept_channels"], dtype=torch.long, device=device)] = True
        wq = _fixed_quantizer("weight", layer["weight"], keep, ranges, name).to(device).train(m.training)
        iq = None
        if layer["input"] is not None:
            iq = _fixed_quantizer("input", layer["input"], None, ranges, name).to(device).train(m.training)
        adapter = get_adapter(m, name)
        wrap_layer(m, wq, iq, name)
        if ranges == "data":  # weights calibrate now, as the uniform baselines' do (inputs on the first batch)
            wq.init_range(adapter.weight(m))
    return model
