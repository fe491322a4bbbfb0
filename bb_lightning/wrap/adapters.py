"""How to quantize each supported layer type: its *effective* weight and its op with a given weight.

The table is keyed by exact type. A conv/linear subclass that overrides ``forward`` and is not in the table is
rejected by `get_adapter` with `bb_lightning.errors.UnsupportedLayerError`; a subclass that does not
override ``forward`` uses the adapter of the nearest supported base class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedLayerError


@dataclass(frozen=True)
class LayerAdapter:
    """How to quantize one layer type.

    Attributes:
        weight: ``weight(module) -> Tensor``, the weight the layer really uses (e.g. standardised for ``StdConv2d``);
            it is what gets quantized and what initialises the weight range.
        run: ``run(module, x, weight) -> Tensor``, the layer's forward with that (quantized) weight, including bias,
            padding, stride and groups.
    """

    weight: Callable[[nn.Module], Tensor]
    run: Callable[[nn.Module, Tensor, Tensor], Tensor]


def _raw_weight(m: nn.Module) -> Tensor:
    return m.weight


def _conv_run(m: nn.Module, x: Tensor, w: Tensor) -> Tensor:
    return m._conv_forward(x, w, m.bias)


def _linear_run(m: nn.Module, x: Tensor, w: Tensor) -> Tensor:
    return F.linear(x, w, m.bias)


LAYER_ADAPTERS: dict[type, LayerAdapter] = {
    nn.Conv1d: LayerAdapter(_raw_weight, _conv_run),
    nn.Conv2d: LayerAdapter(_raw_weight, _conv_run),
    nn.Linear: LayerAdapter(_raw_weight, _linear_run),
}


def register_layer_adapter(cls: type, adapter: LayerAdapter) -> None:
    """Support the layer class ``cls`` (matched by exact type) with ``adapter``; call it before ``trainer.fit``.

    A selected layer's adapter is looked up along its class's MRO; a class that overrides ``forward`` before an
    adapter is found raises ``UnsupportedLayerError``. Built in: ``nn.Conv1d``, ``nn.Conv2d``, ``nn.Linear`` and
    timm's ``Conv2dSame``, ``StdConv2d``, ``StdConv2dSame``, ``ScaledStdConv2d``, ``ScaledStdConv2dSame``, ``Linear``.

    Args:
        cls: an ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` subclass.
        adapter: how to get its effective weight and how to run it with a quantized weight.

    Example:
        ```python
        register_layer_adapter(GainConv2d, LayerAdapter(
            weight=lambda m: m.weight * m.gain,  # the weight the layer really uses is what gets quantized
            run=lambda m, x, w: F.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups),
        ))
        ```
    """
    LAYER_ADAPTERS[cls] = adapter


def _register_timm() -> None:
    try:
        import importlib

        # import the submodules by path: ``timm.layers.conv2d_same`` is also a function name in ``timm.layers``
        conv2d_same = importlib.import_module("timm.layers.conv2d_same")
        std_conv = importlib.import_module("timm.layers.std_conv")
        timm_linear = importlib.import_module("timm.layers.linear")
        pad_same = importlib.import_module("timm.layers.padding").pad_same
    except ImportError:  # pragma: no cover - timm is a dependency
        return

    def conv_same_run(m: nn.Module, x: Tensor, w: Tensor) -> Tensor:
        return conv2d_same.conv2d_same(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)

    def std_weight(m: nn.Module) -> Tensor:
        w = m.weight.reshape(1, m.out_channels, -1)
        return F.batch_norm(w, None, None, training=True, momentum=0.0, eps=m.eps).reshape_as(m.weight)

    def scaled_std_weight(m: nn.Module) -> Tensor:
        w = m.weight.reshape(1, m.out_channels, -1)
        gain = (m.gain * m.scale).view(-1)
        return F.batch_norm(w, None, None, weight=gain, training=True, momentum=0.0, eps=m.eps).reshape_as(m.weight)

    def plain_conv2d(m: nn.Module, x: Tensor, w: Tensor) -> Tensor:
        if getattr(m, "same_pad", False):
            x = pad_same(x, m.kernel_size, m.stride, m.dilation)
        return F.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)

    LAYER_ADAPTERS[conv2d_same.Conv2dSame] = LayerAdapter(_raw_weight, conv_same_run)
    LAYER_ADAPTERS[std_conv.StdConv2d] = LayerAdapter(std_weight, plain_conv2d)
    LAYER_ADAPTERS[std_conv.StdConv2dSame] = LayerAdapter(std_weight, plain_conv2d)
    LAYER_ADAPTERS[std_conv.ScaledStdConv2d] = LayerAdapter(scaled_std_weight, plain_conv2d)
    LAYER_ADAPTERS[std_conv.ScaledStdConv2dSame] = LayerAdapter(scaled_std_weight, plain_conv2d)
    LAYER_ADAPTERS[timm_linear.Linear] = LayerAdapter(_raw_weight, _linear_run)


_register_timm()

#: Base types that make a module a candidate for quantization.
QUANTIZABLE_BASES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)


def is_candidate(module: nn.Module) -> bool:
    return isinstance(module, QUANTIZABLE_BASES)


def get_adapter(module: nn.Module | type, name: str = "") -> LayerAdapter:
    """The adapter for ``module`` (or a layer class); raises `UnsupportedLayerError` naming the layer if none."""
    cls = module if isinstance(module, type) else type(module)
    for klass in cls.__mro__:
        if klass in LAYER_ADAPTERS:
            return LAYER_ADAPTERS[klass]
        if "forward" in klass.__dict__:
            break
    raise UnsupportedLayerError(
        f"Layer `{name or '?'}` of type `{cls.__module__}.{cls.__qualname__}` overrides `forward`, so quantizing its "
        "`weight` could silently change what it computes. HINT: register an adapter with "
        f"`bb_lightning.register_layer_adapter({cls.__qualname__}, LayerAdapter(weight=..., run=...))` or exclude it "
        f"with `exclude=['{name}']`."
    )
