"""Which layer's output channels a conv/linear layer reads: the producer map behind input-side pruning credit.

When a layer prunes output channel ``c``, that channel of its output is a constant (its bias, passed through the
per-channel ops that follow). Its consumer's weights for input channel ``c`` then only add a constant, which folds
into the consumer's bias, so those MACs and weights are saved too. The reference counts this saving for layers whose
producer it knows (Bayesian Bits spec 4.1, ``rho_in``); this module finds the producer of every layer with one
evaluation forward:

* each conv/linear output is tagged with the layer's name and its channel dimension (1 for conv, last for linear);
* a tag survives only per-channel ops whose output keeps the batch and channel dimensions: activations, dropout,
  BatchNorm / InstanceNorm (per-channel affine), pooling, arithmetic with a Python number, dtype/contiguity
  changes, means over non-channel dimensions, and a flatten of ``[N, C, ...]`` into ``[N, C * S]`` (channel-major,
  each channel becomes ``S`` features);
* everything else drops it: residual adds and concatenations (several producers), LayerNorm / GroupNorm and softmax
  (mix channels), multiplications by tensors (SE gates), permutes and attention. Such layers get no producer and no
  input-side credit, as the reference's residual-stream convs.

A layer or producer that runs more than once, or whose input width does not match its producer's channels, gets
no producer either.

>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 2))
>>> find_producers(net, {"0": net[0], "3": net[3]}, torch.zeros(1, 1, 8, 8))
{'3': '0'}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .macs import hooked_eval_forward

#: ops that act on every channel separately and keep the tensor's layout (first tensor argument is the data)
_PER_CHANNEL = frozenset({
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "gelu", "silu", "silu_", "hardswish", "hardswish_",
    "hardsigmoid", "hardsigmoid_", "sigmoid", "sigmoid_", "tanh", "tanh_", "leaky_relu", "leaky_relu_", "elu",
    "elu_", "selu", "selu_", "celu", "mish", "softplus", "clamp", "clamp_", "clamp_min", "clamp_max", "threshold",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "contiguous",
    "clone", "to", "float", "half", "bfloat16", "type_as", "detach", "batch_norm", "instance_norm", "max_pool1d",
    "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "max_pool2d_with_indices", "lp_pool2d",
})
#: binary arithmetic: keeps the tag when the other operand is a Python number
_SCALAR_ARITH = frozenset({
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "__add__", "__radd__", "__iadd__", "__sub__",
    "__rsub__", "__isub__", "__mul__", "__rmul__", "__imul__", "__truediv__", "__itruediv__",
})
_FLATTEN = frozenset({"flatten", "view", "reshape"})
_REDUCE = frozenset({"mean", "amax", "sum"})


@dataclass(frozen=True)
class _Tag:
    producer: str
    dim: int  # channel dimension (non-negative)
    channels: int  # producer's output channels
    repeat: int = 1  # features per channel (after a flatten)


def _first_tensor(args: tuple, kwargs: dict) -> Tensor | None:
    for a in args:
        if isinstance(a, Tensor):
            return a
    x = kwargs.get("input")
    return x if isinstance(x, Tensor) else None


def _reduced_dims(args: tuple, kwargs: dict, ndim: int) -> tuple[set[int], bool] | None:
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return {d % ndim for d in dims}, keep


def _propagate(name: str, tag: _Tag, src: Tensor, out: Tensor, args: tuple, kwargs: dict) -> _Tag | None:
    """The tag of ``out`` = op ``name`` applied to ``src`` (tagged ``tag``), or None if channels may be mixed."""
    same_layout = out.dim() == src.dim() and out.shape[0] == src.shape[0] and out.shape[tag.dim] == src.shape[tag.dim]
    if name in _PER_CHANNEL:
        return tag if same_layout else None
    if name in _SCALAR_ARITH:
        others = [a for a in args if a is not src] + list(kwargs.values())
        return tag if same_layout and all(isinstance(o, (int, float)) for o in others) else None
    if name in _FLATTEN and out.dim() == 2 and src.dim() > 2 and tag.dim == 1 and out.shape[0] == src.shape[0]:
        per_channel = src[0].numel() // src.shape[1]
        if out.shape[1] == src.shape[1] * per_channel:  # [N, C, ...] -> [N, C*S], channel-major
            return _Tag(tag.producer, 1, tag.channels, tag.repeat * per_channel)
        return None
    if name in _REDUCE:
        red = _reduced_dims(args, kwargs, src.dim())
        if red is None or tag.dim in red[0] or 0 in red[0]:
            return None
        dim = tag.dim if red[1] else tag.dim - sum(1 for d in red[0] if d < tag.dim)
        return tag if dim == tag.dim else _Tag(tag.producer, dim, tag.channels, tag.repeat)
    return None


class _Tracker(TorchFunctionMode):
    """Carries producer tags from tensor to tensor through the ops that keep channels apart."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[int, tuple[_Tag, Tensor]] = {}  # id -> (tag, tensor kept alive so ids stay unique)

    def tag_of(self, t: Any) -> _Tag | None:
        hit = self.tags.get(id(t)) if isinstance(t, Tensor) else None
        return hit[0] if hit is not None and hit[1] is t else None

    def set_tag(self, t: Tensor, tag: _Tag) -> None:
        self.tags[id(t)] = (tag, t)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        src = _first_tensor(args, kwargs)
        tag = self.tag_of(src)
        if tag is None:
            return out
        res = out[0] if isinstance(out, tuple) and out and isinstance(out[0], Tensor) else out
        name = getattr(func, "__name__", "")
        try:
            new = _propagate(name, tag, src, res, args, kwargs) if isinstance(res, Tensor) else None
        except Exception:  # noqa: BLE001 - an op this module does not understand mixes channels, as far as it knows
            new = None
        if res is src or name == "__setitem__":  # written in place: the source keeps its tag only if still per-channel
            if new is None:
                self.tags.pop(id(src), None)
        elif new is not None:
            self.set_tag(res, new)
        return out


def _in_width(m: nn.Module) -> tuple[int, int]:
    """(channel dimension of the input, input channels) of a conv/linear layer."""
    if isinstance(m, nn.Linear):
        return -1, int(m.in_features)
    return 1, int(m.in_channels)


@torch.no_grad()
def find_producers(root: nn.Module, layers: dict[str, nn.Module], example: Tensor) -> dict[str, str]:
    """``{layer: producer layer}`` for every layer in ``layers`` (name -> conv/linear) whose input channels are,
    one to one (or ``S`` features each, after a flatten), the output channels of one other layer in ``layers``.

    One evaluation forward of ``root`` on ``example``; see the module docstring for what keeps channels apart.
    """
    tracker = _Tracker()
    calls: dict[str, int] = {}
    seen: dict[str, _Tag | None] = {}
    handles = []

    def out_hook(name: str, channels: int, dim: int):
        def hook(module: nn.Module, inp: Any, out: Any) -> None:
            if isinstance(out, Tensor) and out.dim() >= 2:
                tracker.set_tag(out, _Tag(name, dim % out.dim(), channels))

        return hook

    def in_hook(name: str, m: nn.Module):
        def hook(module: nn.Module, inp: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            x = inp[0] if inp and isinstance(inp[0], Tensor) else None
            tag = tracker.tag_of(x)
            dim, width = _in_width(m)
            ok = tag is not None and x.dim() >= 2 and tag.dim == dim % x.dim() and tag.channels * tag.repeat == width
            seen[name] = tag if ok else None

        return hook

    for name, m in layers.items():
        dim = -1 if isinstance(m, nn.Linear) else 1
        handles.append(m.register_forward_pre_hook(in_hook(name, m)))
        handles.append(m.register_forward_hook(out_hook(name, int(m.weight.shape[0]), dim)))
    with tracker:
        hooked_eval_forward(root, example, handles)
    return {
        name: tag.producer
        for name, tag in seen.items()
        if tag is not None and calls.get(name) == 1 and calls.get(tag.producer) == 1 and tag.producer != name
    }


__all__ = ["find_producers"]
