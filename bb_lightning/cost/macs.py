"""Count MACs of conv/linear layers with one forward pass on an example input.

Convention: one multiply-accumulate is one MAC; bias, normalisation, activations, pooling, residual adds and
attention matmuls (not conv/linear) count 0. For a layer with weight ``W`` and output ``Y`` (per sample)::

    MACs = W.numel() * Y.numel() / C_out

which is ``C_out * C_in/groups * k_h * k_w * H_out * W_out`` for a conv and ``in * out * tokens`` for a linear.

>>> conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
>>> count_macs(conv, {"": conv}, torch.zeros(1, 3, 32, 32))[""].macs
55296
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class LayerCount:
    macs: int
    order: int  # execution order of the first call
    out_shape: tuple[int, ...]  # per-sample output shape
    input_numel: int = 0  # per-sample input elements (summed over calls), for activation-memory costs


@torch.no_grad()
def count_macs(root: nn.Module, layers: dict[str, nn.Module], example: Tensor) -> dict[str, LayerCount]:
    """Run ``root(example)`` once in eval mode and count MACs of ``layers`` (name -> module).

    Layers that did not run through their own ``forward`` (e.g. ``nn.MultiheadAttention.out_proj``) are absent
    from the result. A layer called several times is counted for every call. The batch dimension is divided out.
    """
    counts: dict[str, LayerCount] = {}
    batch = int(example.shape[0]) if example.dim() > 0 else 1
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, inp, out) -> None:
            if not isinstance(out, Tensor):
                return
            c_out = int(module.weight.shape[0])
            macs = int(module.weight.numel()) * int(out.numel()) // (c_out * batch)
            x = inp[0] if inp and isinstance(inp[0], Tensor) else None
            numel = int(x.numel()) // batch if x is not None else 0
            prev = counts.get(name)
            if prev is None:
                counts[name] = LayerCount(macs, len(counts), tuple(out.shape[1:]), numel)
            else:
                prev.macs += macs
                prev.input_numel += numel

        return hook

    for name, module in layers.items():
        handles.append(module.register_forward_hook(make_hook(name)))
    hooked_eval_forward(root, example, handles)
    return counts


@torch.no_grad()
def hooked_eval_forward(root: nn.Module, example: Tensor, handles: list) -> None:
    """Run ``root(example)`` once in eval mode without grad, then remove the hook ``handles`` and restore the mode."""
    was_training = root.training
    root.eval()
    try:
        root(example)
    finally:
        for h in handles:
            h.remove()
        root.train(was_training)
