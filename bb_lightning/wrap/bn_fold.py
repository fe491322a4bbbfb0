"""Batch-norm folding: a conv/linear followed by BatchNorm quantizes the *folded* weight (spec 5.5, 5.4, 7.19).

Notation, per output channel: ``gamma``, ``beta`` (BN affine), ``mu``, ``var`` (running statistics), ``eps``,
``sigma = sqrt(var + eps)``, ``b`` the layer's own bias (0 if none), ``W`` its weight.

* **Training-time fold** (`fold_bn_train`, Jacob et al. 2018, the reference's scheme): the layer's effective weight
  becomes ``W_f = W * gamma / sigma_run``, which is what a quantizer sees. In training mode the layer also runs
  ``conv(x, W)`` to get the batch statistics ``mu_B``, ``sigma_B`` over every dimension but the channel one, updates
  the running statistics as BatchNorm does, and returns ``conv(x, Q(W_f)) * sigma_run / sigma_B + beta -
  gamma * mu_B / sigma_B``; in evaluation (or when the BN module is in eval mode) it returns ``conv(x, Q(W_f)) +
  beta + gamma * (b - mu_run) / sigma_run``. Without a quantizer both equal ``bn(conv(x))`` (the extra conv is the
  price of folding in training). The BN module stays where it was, with its parameters and buffers (state-dict keys
  are unchanged), but its own forward only applies what follows the normalisation (timm ``BatchNormAct2d``: drop +
  activation).
* **Static fold** (`fold_bn_static`, fine-tuning and export): ``W <- W * gamma / sigma_run``, ``b <- beta + gamma *
  (b - mu_run) / sigma_run`` (a bias is created if needed) and the BN module is replaced by `FoldedBatchNorm`, which
  keeps a ``BatchNormAct2d``'s activation. Batch statistics are no longer used.

Supported layers: exactly ``nn.Conv1d``, ``nn.Conv2d``, ``nn.Linear`` and timm's ``Linear`` whose output feeds a
BatchNorm (``nn.BatchNorm1d/2d`` or a subclass such as timm's ``BatchNormAct2d``) with running statistics, and nothing
else; other pairs are left unfolded with a warning.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..cost.macs import hooked_eval_forward
from ..errors import BBConfigError
from .adapters import LayerAdapter, register_layer_adapter
from .layers import is_wrapped, quantized_class

_BN_ATTR = "_bb_bn"  # the folded BN, kept in the layer's __dict__ (not a submodule: no duplicate state-dict keys)
_ORIG_ATTR = "_bb_unfolded_cls"


# ----- the maths ------------------------------------------------------------------------------------------
def _channel_view(t: Tensor, ndim: int) -> Tensor:
    """``[C] -> [1, C, 1, ...]`` for an ``ndim``-dimensional output whose channel dimension is 1."""
    return t.view((1, -1) + (1,) * (ndim - 2))


def bn_scale(bn: _BatchNorm) -> Tensor:
    """``gamma / sqrt(running_var + eps)``, shape ``[C]``."""
    inv = torch.rsqrt(bn.running_var + bn.eps)
    return inv * bn.weight if bn.affine else inv


def folded_weight(layer: nn.Module, bn: _BatchNorm) -> Tensor:
    """``W * gamma / sigma_run`` broadcast over output channels (same shape as ``layer.weight``)."""
    w = layer.weight
    return w * bn_scale(bn).view((-1,) + (1,) * (w.dim() - 1))


def folded_bias(layer: nn.Module, bn: _BatchNorm) -> Tensor:
    """``beta + gamma * (b - mu_run) / sigma_run``, shape ``[C]``."""
    b = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    out = bn_scale(bn) * (b - bn.running_mean)
    return out + bn.bias if bn.affine else out


def _plain_run(layer: nn.Module, x: Tensor, w: Tensor) -> Tensor:
    """The layer's op with weight ``w`` and no bias."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, w)
    return layer._conv_forward(x, w, None)


@torch.no_grad()
def _update_running_stats(bn: _BatchNorm, mean: Tensor, var_unbiased: Tensor) -> None:
    """BatchNorm's running-statistics update (momentum, or a cumulative average when ``momentum is None``)."""
    bn.num_batches_tracked.add_(1)
    f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    bn.running_mean.lerp_(mean, f)
    bn.running_var.lerp_(var_unbiased, f)


def _folded_run(layer: nn.Module, x: Tensor, w_q: Tensor) -> Tensor:
    """Forward of a training-time folded layer with the (quantized) folded weight ``w_q``; see the module doc."""
    bn: _BatchNorm = layer.__dict__[_BN_ATTR]
    y = _plain_run(layer, x, w_q)
    if not bn.training:
        return y + _channel_view(folded_bias(layer, bn), y.dim())
    y_fp = _plain_run(layer, x, layer.weight)  # unfolded, unquantized: only for the batch statistics
    dims = [d for d in range(y_fp.dim()) if d != 1]
    n = y_fp.numel() // y_fp.shape[1]
    var_b, mu_b = torch.var_mean(y_fp.float(), dim=dims, correction=0)  # statistics in float32, also under AMP
    sigma_b = torch.sqrt(var_b + bn.eps)
    sigma_run = torch.sqrt(bn.running_var + bn.eps)  # before this step's update: the one W_f was folded with
    gamma = bn.weight if bn.affine else torch.ones_like(sigma_b)
    beta = bn.bias if bn.affine else torch.zeros_like(sigma_b)
    out = y * _channel_view(sigma_run / sigma_b, y.dim()) + _channel_view(beta - gamma * mu_b / sigma_b, y.dim())
    b = layer.bias.detach() if layer.bias is not None else 0.0
    _update_running_stats(bn, mu_b.detach() + b, var_b.detach() * (n / max(n - 1, 1)))
    return out


def _folded_weight(layer: nn.Module) -> Tensor:
    return folded_weight(layer, layer.__dict__[_BN_ATTR])


# ----- module classes -------------------------------------------------------------------------------------
class _TrainFolded:
    """Mixin of the training-time folded layer classes: ``forward`` is conv + BN through the folded weight."""

    def forward(self, x: Tensor) -> Tensor:
        return _folded_run(self, x, _folded_weight(self))  # type: ignore[arg-type]


class BNFoldedConv1d(_TrainFolded, nn.Conv1d):
    """An ``nn.Conv1d`` with the following BatchNorm folded in at training time."""


class BNFoldedConv2d(_TrainFolded, nn.Conv2d):
    """An ``nn.Conv2d`` with the following BatchNorm folded in at training time."""


class BNFoldedLinear(_TrainFolded, nn.Linear):
    """An ``nn.Linear`` with the following BatchNorm1d folded in at training time."""


_FOLDED: dict[type, type] = {nn.Conv1d: BNFoldedConv1d, nn.Conv2d: BNFoldedConv2d, nn.Linear: BNFoldedLinear}
try:  # timm's Linear only overrides forward for torchscript; it folds like nn.Linear
    from timm.layers import Linear as _TimmLinear

    _FOLDED[_TimmLinear] = BNFoldedLinear
except ImportError:  # pragma: no cover - timm is a dependency
    pass

for _cls in set(_FOLDED.values()):
    register_layer_adapter(_cls, LayerAdapter(weight=_folded_weight, run=_folded_run))
    quantized_class(_cls)


def _bn_tail(bn: nn.Module, x: Tensor) -> Tensor:
    """What a (timm) BatchNorm applies after normalising: ``BatchNormAct2d``'s drop and activation, else nothing."""
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    if drop is not None:
        x = drop(x)
    return act(x) if act is not None else x


_PASS_CLASSES: dict[type, type] = {}


def _pass_class(cls: type) -> type:
    """``cls`` with a forward that skips normalisation (the folded layer does it); importable from this module."""
    if cls not in _PASS_CLASSES:
        name = f"BNFoldedAway{cls.__name__}"
        new = type(name, (cls,), {"forward": _bn_tail, "__module__": __name__})
        globals()[name] = new
        _PASS_CLASSES[cls] = new
    return _PASS_CLASSES[cls]


class FoldedBatchNorm(nn.Module):
    """What replaces a statically folded BatchNorm: its activation (timm ``BatchNormAct2d``), or the identity."""

    def __init__(self, bn: nn.Module | None = None) -> None:
        super().__init__()
        self.drop = getattr(bn, "drop", None) or nn.Identity()
        self.act = getattr(bn, "act", None) or nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(x))


# ----- finding and folding pairs --------------------------------------------------------------------------
def _foldable_bn(m: nn.Module) -> bool:
    return isinstance(m, _BatchNorm) and m.track_running_stats and m.running_var is not None


@torch.no_grad()
def find_bn_pairs(root: nn.Module, example: Tensor, foldable_only: bool = True) -> dict[str, str]:
    """``{layer name: BN name}`` for every conv/linear whose output tensor goes straight into a BatchNorm.

    One evaluation forward on ``example`` with hooks: a pair is found when the BN's input is the very tensor the
    layer returned, each runs once, and the channel counts agree (the layer's output is assumed to feed nothing but
    that BatchNorm, as in conv-BN-act blocks). With ``foldable_only``, pairs whose layer type cannot be folded are
    skipped with a warning naming them; without it every such pair is returned (e.g. of an already wrapped model).
    """
    outputs: dict[str, Any] = {}
    calls: dict[str, int] = {}
    pairs: dict[str, str] = {}
    layers = {n: m for n, m in root.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))}
    bns = {n: m for n, m in root.named_modules() if _foldable_bn(m)}
    handles = []

    def layer_hook(name: str) -> Any:
        def hook(module: nn.Module, inp: Any, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            outputs[name] = out

        return hook

    def bn_hook(name: str) -> Any:
        def hook(module: nn.Module, inp: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            for lname, out in outputs.items():
                if inp and inp[0] is out:
                    pairs[lname] = name

        return hook

    for n, m in layers.items():
        handles.append(m.register_forward_hook(layer_hook(n)))
    for n, m in bns.items():
        handles.append(m.register_forward_pre_hook(bn_hook(n)))
    hooked_eval_forward(root, example, handles)
    good, skipped = {}, []
    for lname, bname in pairs.items():
        layer, bn = layers[lname], bns[bname]
        if calls.get(lname) != 1 or calls.get(bname) != 1 or layer.weight.shape[0] != bn.num_features:
            skipped.append(f"{lname} -> {bname} (shared or reused module)")
        elif foldable_only and type(layer) not in _FOLDED and not isinstance(layer, _TrainFolded):
            skipped.append(f"{lname} -> {bname} ({type(layer).__name__} cannot be folded)")
        else:
            good[lname] = bname
    if skipped:
        warnings.warn(f"bb_lightning: BatchNorm left unfolded for: {skipped}", stacklevel=2)
    return good


def _modules(root: nn.Module, layer: str, bn: str) -> tuple[nn.Module, nn.Module]:
    modules = dict(root.named_modules())
    for name in (layer, bn):
        if name not in modules:
            raise BBConfigError(f"BatchNorm folding: `{type(root).__name__}` has no module `{name}`.")
    return modules[layer], modules[bn]


def fold_bn_train(root: nn.Module, layer: str, bn: str) -> None:
    """Fold the BatchNorm ``bn`` into the preceding ``layer`` for training (in place; see the module docstring)."""
    m, b = _modules(root, layer, bn)
    if isinstance(m, _TrainFolded) and m.__dict__.get(_BN_ATTR) is b:
        return
    if is_wrapped(m) or type(m) not in _FOLDED or not _foldable_bn(b):
        raise BBConfigError(
            f"Cannot fold `{bn}` ({type(b).__name__}) into `{layer}` ({type(m).__name__}): fold before quantizing, "
            "into an nn.Conv1d/Conv2d/Linear, a BatchNorm with running statistics."
        )
    m.__dict__[_ORIG_ATTR] = type(m)
    m.__class__ = _FOLDED[type(m)]
    m.__dict__[_BN_ATTR] = b
    b.__dict__[_ORIG_ATTR] = type(b)
    b.__class__ = _pass_class(type(b))


def unfold_bn_train(root: nn.Module, layer: str) -> None:
    """Undo `fold_bn_train` on ``layer`` (not quantized): original classes, BN back in its own forward."""
    m = dict(root.named_modules())[layer]
    if not isinstance(m, _TrainFolded):
        return
    if is_wrapped(m):
        raise BBConfigError(f"`{layer}` is quantized; unwrap it before unfolding its BatchNorm.")
    b = m.__dict__.pop(_BN_ATTR)
    m.__class__ = m.__dict__.pop(_ORIG_ATTR)
    b.__class__ = b.__dict__.pop(_ORIG_ATTR)


@torch.no_grad()
def fold_bn_static(root: nn.Module, layer: str, bn: str) -> None:
    """Fold ``bn``'s running statistics into ``layer``'s weight and bias and replace ``bn`` by `FoldedBatchNorm`.

    A training-time fold of the pair is undone first; a pair already folded statically is left alone.
    """
    m, b = _modules(root, layer, bn)
    if isinstance(b, FoldedBatchNorm):
        return
    if is_wrapped(m):
        raise BBConfigError(f"Cannot fold `{bn}` into `{layer}`: the layer is already quantized; fold first.")
    unfold_bn_train(root, layer)
    if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) or not _foldable_bn(b):
        raise BBConfigError(f"Cannot fold `{bn}` ({type(b).__name__}) into `{layer}` ({type(m).__name__}).")
    w, bias = folded_weight(m, b), folded_bias(m, b)
    m.weight.copy_(w)
    if m.bias is None:
        m.bias = nn.Parameter(bias.to(m.weight.dtype))
    else:
        m.bias.copy_(bias)
    parent_name, _, child = bn.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, FoldedBatchNorm(b).to(m.weight.device))


def fold_pairs(root: nn.Module, pairs: dict[str, str], mode: str) -> None:
    """Fold every ``{layer: bn}`` pair with ``mode`` ``"train"`` or ``"static"`` (``"none"``: nothing)."""
    if mode == "none":
        return
    fold = {"train": fold_bn_train, "static": fold_bn_static}.get(mode)
    if fold is None:
        raise BBConfigError(f"Expected a BatchNorm fold mode in ['none', 'train', 'static'], but got {mode!r}.")
    for layer, bn in pairs.items():
        fold(root, layer, bn)


__all__ = [
    "FoldedBatchNorm",
    "find_bn_pairs",
    "fold_bn_static",
    "fold_bn_train",
    "fold_pairs",
    "folded_bias",
    "folded_weight",
    "unfold_bn_train",
]
