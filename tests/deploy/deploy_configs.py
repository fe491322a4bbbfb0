"""Synthetic `MixedPrecisionConfig`s for export tests: every conv/linear layer, widths and grids as asked, ranges
calibrated on one batch (inputs) and from the weights."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from bb_lightning import MixedPrecisionConfig
from bb_lightning.wrap.adapters import get_adapter, is_candidate


@torch.no_grad()
def input_ranges(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """``{layer: (min, max)}`` of each conv/linear layer's input on ``x``."""
    out: dict[str, tuple[float, float]] = {}
    handles = []
    for n, m in model.named_modules():
        if is_candidate(m):
            def pre(mod, inp, n=n):
                t = inp[0]
                lo, hi = float(t.min()), float(t.max())
                a, b = out.get(n, (lo, hi))
                out[n] = (min(a, lo), max(b, hi))
            handles.append(m.register_forward_pre_hook(pre))
    model.eval()(x)
    for h in handles:
        h.remove()
    return out


def make_config(
    model: nn.Module,
    x: torch.Tensor,
    weight_bits: Sequence[int] = (2, 4, 8),
    input_bits: Sequence[int] = (8, 4, 16),
    grid: str = "symmetric",
    per_channel: bool = False,
    prune: float = 0.0,
    float_layers: Sequence[str] = (),
    unquantized: Sequence[str] = (),
    seed: int = 0,
) -> MixedPrecisionConfig:
    """A config cycling through ``weight_bits`` / ``input_bits`` over the layers; ``prune`` the fraction of output
    channels masked (symmetric grid), per-channel bits and ranges for ``per_channel`` min-max weights."""
    gen = torch.Generator().manual_seed(seed)
    ranges = input_ranges(model, x)
    layers = {}
    wb, ib = itertools.cycle(weight_bits), itertools.cycle(input_bits)
    for name, m in model.named_modules():
        if not is_candidate(m):
            continue
        w = get_adapter(m, name).weight(m).detach()
        c = w.shape[0]
        entry = {"type": type(m).__name__, "weight_shape": list(w.shape), "macs": 1,
                 "quantized": name not in unquantized,
                 "weight": None, "input": None, "kept_channels": None, "bops": 1.0}
        layers[name] = entry
        if not entry["quantized"]:
            continue
        bits, abits = (32, 32) if name in float_layers else (next(wb), next(ib))
        lo_in, hi_in = ranges.get(name, (-1.0, 1.0))
        if grid == "minmax":
            if per_channel and bits <= 16:
                flat = w.reshape(c, -1)
                cb = [int(v) for v in torch.randint(max(1, bits - 3), bits + 1, (c,), generator=gen)]
                cr = [[float(a), float(b)] for a, b in zip(flat.min(1).values * 0.9, flat.max(1).values * 0.9)]
                rng = [min(r[0] for r in cr), max(r[1] for r in cr)]
                entry["weight"] = {"bits": max(cb), "signed": True, "range": rng,
                                   "grid": "minmax", "granularity": "channel", "channel_bits": cb, "channel_ranges": cr}
            else:
                entry["weight"] = {"bits": bits, "signed": True, "range": [float(w.min()) * 0.9, float(w.max()) * 0.9],
                                   "grid": "minmax"}
            entry["input"] = {"bits": abits, "signed": lo_in < 0, "range": [lo_in * 0.9, hi_in * 0.9], "grid": "minmax"}
        else:
            uw = max(float(w.abs().max()) * 0.8, 1e-3)
            entry["weight"] = {"bits": bits, "signed": True, "range": [-uw, uw]}
            u = max(abs(lo_in), abs(hi_in), 1e-3) * 0.9
            entry["input"] = {"bits": abits, "signed": lo_in < 0, "range": [-u if lo_in < 0 else 0.0, u]}
            if prune > 0 and c > 2 and bits != 32:
                keep = torch.rand(c, generator=gen) >= prune
                keep[0] = True
                entry["kept_channels"] = [int(i) for i in keep.nonzero().view(-1)]
    return MixedPrecisionConfig.from_dict({"format": "bb_lightning.mixed_precision_config", "version": 1,
                                           "method": "test", "input_bits": 8, "model": {}, "layers": layers,
                                           "totals": {}})
