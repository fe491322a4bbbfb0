"""Fixed (fake-quantized) model -> deploy model: plain conv/linear layers holding the dequantized integer weights,
BatchNorm folded into the per-channel scale and bias, fixed input quantizers kept, pruned channels removed."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._api import BBConfigError, FoldedBatchNorm, MixedPrecisionConfig, apply_config, bn_scale, is_wrapped
from ._api import get_adapter, unwrap_layer
from .codes import input_spec, weight_codes
from .layers import DeployConv1d, DeployConv2d, DeployLinear, is_deploy_layer


def fixed_model(model: nn.Module, config: MixedPrecisionConfig | str | None) -> nn.Module:
    """A copy of ``model`` quantized with ``config`` (`apply_config`); a model that already carries fixed quantizers
    (the result of `apply_config`) is copied as is, a searched model is unwrapped to its float weights first."""
    fixed = copy.deepcopy(model)
    wrapped = [(n, m) for n, m in fixed.named_modules() if is_wrapped(m)]
    if config is None:
        if not wrapped:
            raise BBConfigError(
                f"`{type(model).__name__}` has no quantized layers: pass the MixedPrecisionConfig (or its path) too."
            )
        return fixed.eval()
    for _, m in wrapped:  # a searched model: its float weights are what the config quantizes
        unwrap_layer(m)
    if not isinstance(config, MixedPrecisionConfig):
        config = MixedPrecisionConfig.load(config)
    modules = dict(fixed.named_modules())
    for name, layer in config.layers.items():  # name the layer an unsupported type would fail on
        if layer["quantized"] and name in modules:
            get_adapter(modules[name], name)
    return apply_config(fixed, config).eval()


def _plain_layer(name: str, m: nn.Module) -> nn.Module:
    bias = m.bias is not None
    if isinstance(m, nn.Linear):
        new: nn.Module = DeployLinear(m.in_features, m.out_features, bias=bias)
    elif isinstance(m, nn.Conv2d):
        same = type(m).__name__.startswith("Conv2dSame") or "Conv2dSame" in [c.__name__ for c in type(m).__mro__]
        same = same or bool(getattr(m, "same_pad", False))
        padding = 0 if same else m.padding
        new = DeployConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, padding, m.dilation, m.groups,
                           bias=bias, padding_mode=m.padding_mode)
        new.same_pad_flag = same
    elif isinstance(m, nn.Conv1d):
        new = DeployConv1d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                           bias=bias, padding_mode=m.padding_mode)
    else:
        raise BBConfigError(f"Layer `{name}`: cannot deploy a `{type(m).__name__}` (conv1d/conv2d/linear only).")
    return new.to(m.weight.device)


@torch.no_grad()
def _replace(root: nn.Module, name: str, m: nn.Module) -> nn.Module:
    codes = weight_codes(name, m.weight_quantizer, m._bb_adapter.weight(m))
    iq = m.input_quantizer
    spec = None if iq is None else input_spec(name, iq)
    new = _plain_layer(name, m)
    new.weight.copy_(codes.dequantize() if codes.codes is not None else codes.dense)
    if m.bias is not None:
        new.bias.copy_(m.bias)
    new._init_deploy(codes, iq, spec)
    new.same_pad = bool(getattr(new, "same_pad_flag", False))
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)
    return new


@torch.no_grad()
def _bn_pairs(root: nn.Module, example: Tensor) -> dict[str, str]:
    """``{deploy layer: BatchNorm}`` where the BN's input is exactly the layer's output (each called once)."""
    outs: dict[str, Any] = {}
    calls: dict[str, int] = {}
    pairs: dict[str, str] = {}
    handles = []
    for n, m in root.named_modules():
        if is_deploy_layer(m):
            def hook(mod, inp, out, n=n):  # noqa: ANN001
                calls[n] = calls.get(n, 0) + 1
                outs[n] = out
            handles.append(m.register_forward_hook(hook))
        elif isinstance(m, _BatchNorm) and m.track_running_stats and m.running_var is not None:
            def pre(mod, inp, n=n):  # noqa: ANN001
                calls[n] = calls.get(n, 0) + 1
                for ln, out in outs.items():
                    if inp and inp[0] is out:
                        pairs[ln] = n
            handles.append(m.register_forward_pre_hook(pre))
    try:
        root(example)
    finally:
        for h in handles:
            h.remove()
    return {ln: bn for ln, bn in pairs.items() if calls.get(ln) == 1 and calls.get(bn) == 1}


@torch.no_grad()
def fold_batchnorms(root: nn.Module, example: Tensor) -> list[str]:
    """Fold every BatchNorm that directly follows a deploy layer into that layer's per-channel scale and bias;
    returns the folded BN names. A timm ``BatchNormAct2d`` leaves its activation behind (`FoldedBatchNorm`)."""
    folded = []
    modules = dict(root.named_modules())
    for ln, bn_name in _bn_pairs(root, example).items():
        layer, bn = modules[ln], modules[bn_name]
        g = bn_scale(bn).float()
        b = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        bias = g * (b - bn.running_mean)
        if bn.affine:
            bias = bias + bn.bias
        layer.fold_channel_scale(g, bias)
        parent_name, _, child = bn_name.rpartition(".")
        setattr(root.get_submodule(parent_name) if parent_name else root, child, FoldedBatchNorm(bn))
        folded.append(bn_name)
    return folded


def to_deploy_model(
    model: nn.Module,
    config: MixedPrecisionConfig | str | None,
    example_input: Tensor,
    remove_pruned: bool = True,
    int8_bias: bool = True,
) -> nn.Module:
    """The deployable PyTorch model of ``model`` quantized with ``config``.

    Every quantized conv/linear becomes a plain layer whose float weight is exactly ``codes * scale (+ lo)``
    (BatchNorm folded into the per-channel scale and bias), preceded by its fixed input quantizer. With
    ``remove_pruned`` the output channels whose removal provably changes no output are physically removed
    (`bb_lightning.deploy.prune`); the per-layer removed / kept-as-zero counts are in ``model.bb_removal_report``.

    Args:
        model: the float model the config was exported from (trained weights), the result of `apply_config`, or a
            searched model (its quantizers are dropped and the config's fixed ones applied).
        config: the `MixedPrecisionConfig` or its JSON path (``None`` if ``model`` already has fixed quantizers).
        example_input: one input batch, e.g. ``torch.zeros(1, 3, 224, 224)`` (shapes only).
        remove_pruned: physically remove the channels that can be removed exactly.
        int8_bias: round the bias of convs with 5..8-bit weights and inputs to int32 at scale ``s_in * s_w`` (what
            onnxruntime's integer kernel, QLinearConv, needs; at most half an accumulator step of difference).

    Returns:
        An ``nn.Module`` in eval mode; its outputs equal the fixed model's up to float rounding of the BN fold.
    """
    dep = fixed_model(model, config)
    for name, m in [(n, m) for n, m in dep.named_modules() if is_wrapped(m)]:
        _replace(dep, name, m)
    dep.eval()
    fold_batchnorms(dep, example_input)
    if int8_bias:
        for m in dep.modules():
            if is_deploy_layer(m):
                m.quantize_bias_for_int8_kernels()
    report: list[dict] = []
    if remove_pruned:
        from .prune import remove_pruned_channels

        dep, report = remove_pruned_channels(dep, example_input)
    dep.bb_removal_report = report
    return dep.eval()
