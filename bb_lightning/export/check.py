"""Does a float model match an exported config? Every mismatch, reported at once."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import BBConfigError
from ..wrap.adapters import is_candidate
from ..wrap.layers import is_wrapped


def check_model(model: nn.Module, config: Any) -> None:
    """Raise `BBConfigError` listing every mismatch: layers of ``config`` that ``model`` lacks or shapes differently,
    and conv/linear layers of ``model`` the config does not know (a config names every conv/linear layer)."""
    modules = dict(model.named_modules())
    problems = []
    for name, layer in config.layers.items():
        m = modules.get(name)
        if m is None:
            problems.append(f"`{name}`: no such module")
        elif not hasattr(m, "weight") or not isinstance(m.weight, torch.Tensor):
            problems.append(f"`{name}`: `{type(m).__name__}` has no weight")
        elif list(m.weight.shape) != list(layer["weight_shape"]):
            problems.append(f"`{name}`: weight shape {list(m.weight.shape)}, config has {layer['weight_shape']}")
        elif is_wrapped(m):
            problems.append(f"`{name}`: already quantized")
    extra = sorted(n for n, m in modules.items() if is_candidate(m) and not is_wrapped(m) and n not in config.layers)
    if extra:
        problems.append(f"conv/linear layers not in the config: {extra[:10]}" + (" ..." if len(extra) > 10 else ""))
    if problems:
        raise BBConfigError(
            f"Model `{type(model).__name__}` does not match the MixedPrecisionConfig ({len(problems)} problem(s)): "
            + "; ".join(problems)
        )
