"""In-place wrapping of a conv/linear module into a quantized one.

The module's class is swapped for a generated subclass ``Quantized<Type>`` of the original type, and two submodules
are added: ``weight_quantizer`` and ``input_quantizer`` (``None`` when the input stays float). Every original
parameter and buffer stays where it was, so the state dict keeps every original key (``conv1.weight`` ...) and gains
only ``conv1.weight_quantizer.*`` / ``conv1.input_quantizer.*``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..methods.base import QuantizerBase
from .adapters import LAYER_ADAPTERS, LayerAdapter, get_adapter


class QuantizedLayer(nn.Module):
    """Mixin placed in front of the original layer class; see the module docstring."""

    _bb_adapter: LayerAdapter
    _bb_base: type
    weight_quantizer: QuantizerBase
    input_quantizer: QuantizerBase | None

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return self._bb_adapter.run(self, x, self.quantized_weight())

    def train(self, mode: bool = True) -> QuantizedLayer:
        self._bb_cache = None
        return super().train(mode)

    def quantized_weight(self) -> Tensor:
        """The weight as the layer uses it, quantized; cached in eval mode without grad until any parameter changes."""
        if self.training or torch.is_grad_enabled():
            self._bb_cache = None
            return self.weight_quantizer(self._bb_adapter.weight(self))
        key = tuple((id(p), p._version, p.device, p.dtype) for p in self.parameters())
        key += (self.weight_quantizer.frozen,)
        cache = getattr(self, "_bb_cache", None)
        if cache is None or cache[0] != key:
            cache = (key, self.weight_quantizer(self._bb_adapter.weight(self)))
            self._bb_cache = cache
        return cache[1]


_CLASSES: dict[type, type] = {}


def quantized_class(cls: type, name: str = "") -> type:
    """The generated ``Quantized<cls>`` subclass (created once per type and importable from this module)."""
    if issubclass(cls, QuantizedLayer):
        return cls
    if cls not in _CLASSES:
        adapter = get_adapter(cls, name)
        tag = f"Quantized{cls.__name__}"
        if tag in globals():
            tag = f"Quantized_{cls.__module__.replace('.', '_')}_{cls.__name__}"
        new = type(tag, (QuantizedLayer, cls), {"__module__": __name__, "_bb_adapter": adapter, "_bb_base": cls})
        new.__qualname__ = tag
        globals()[tag] = new  # picklable by qualified name
        _CLASSES[cls] = new
    return _CLASSES[cls]


def wrap_layer(
    module: nn.Module, weight_quantizer: QuantizerBase, input_quantizer: QuantizerBase | None, name: str = ""
) -> None:
    """Turn ``module`` into its quantized class in place and attach the quantizers; ``name`` (the layer's name in the
    model) goes into the quantizers' error messages."""
    for q in (weight_quantizer, input_quantizer):
        if q is not None and name:
            q.layer_name = name
    module.__class__ = quantized_class(type(module))
    module.weight_quantizer = weight_quantizer
    module.input_quantizer = input_quantizer
    module._bb_cache = None


def unwrap_layer(module: nn.Module) -> None:
    """Undo `wrap_layer`: drop the quantizers, restore the original class."""
    if not isinstance(module, QuantizedLayer):
        return
    del module.weight_quantizer
    del module.input_quantizer
    module.__dict__.pop("_bb_cache", None)
    module.__class__ = module._bb_base


def is_wrapped(module: nn.Module) -> bool:
    return isinstance(module, QuantizedLayer)


for _cls in list(LAYER_ADAPTERS):
    quantized_class(_cls)
