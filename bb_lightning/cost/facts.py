"""Per-layer cost facts: the one place that turns bit widths into BOPs, memory and kept channels.

Read by the export (`bb_lightning.export.build`), the text table (`MixedPrecisionConfig.table`), the W&B/PNG views
(`bb_lightning.viz.snapshot`), the ``report`` command and the ``bb/*`` metrics, from live quantizers
(`layer_costs`) or from a saved config (`config_costs`); `cost_totals` sums them.

Convention (Bayesian Bits spec, section 4): for each conv/linear layer ``l``::

    BOPs_l = b_w(l) * b_a(l) * MACs_l * kappa_l
    relative BOPs = sum_l BOPs_l / sum_l (32 * 32 * MACs_l)

``kappa_l`` is the fraction of the layer's MACs that survive pruning: its kept output channels over ``C_out``, times
``rho_in``, the fraction of its input channels its *producer* keeps (the reference's counting, spec 4.1). A layer has
a producer when its input channels are, one to one, another layer's output channels
(`bb_lightning.cost.channels.find_producers`: through activations, BatchNorm, pooling and flatten, not through
residual adds, concatenations or LayerNorm); a pruned producer channel is then a constant that folds into this layer's
bias. For a grouped conv ``kappa_l`` averages, over kept output channels, the kept fraction of their own group's
inputs. ``b_a`` of the first layer, whose input (the image) is not quantized, is ``input_bits`` (8). Widths of 32 and
more are float and count as 32. Weight memory is ``sum_l b_w(l) * params_l * kappa_l`` bits. Per-channel widths count
with their mean over the kept channels.

>>> c = LayerCost("fc", macs=100, params=100, w_bits=8, a_bits=8, kept=5, channels=10)
>>> c.bops, c.fp32_bops, c.weight_bits
(3200.0, 102400, 400.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core.fake_quant import FLOAT_BITS
from .record import LayerRecord, float_input_bits


@dataclass
class LayerCost:
    """The cost facts of one planned conv/linear layer (deterministic, exported bit widths)."""

    name: str
    macs: int
    params: int
    w_bits: int  #: weight bits: 0 = every output channel pruned, >= 32 = float
    a_bits: int  #: input bits as counted (an unquantized first-layer input at ``input_bits``, other floats at 32)
    kept: int
    channels: int
    #: mean weight bits over the kept channels when they differ per channel (``w_bits`` is then their maximum)
    w_bits_mean: float | None = None
    quantized: bool = True
    type: str = ""
    #: ``kappa``: fraction of MACs (and weights) left after output- and input-side pruning; None = `kept_fraction`
    kept_macs: float | None = None

    @property
    def kept_fraction(self) -> float:
        """Kept output channels over all output channels."""
        return self.kept / self.channels if self.channels else 1.0

    @property
    def kept_macs_fraction(self) -> float:
        """``kappa``: the fraction of this layer's MACs and weights that pruning leaves (output and input side)."""
        return self.kept_fraction if self.kept_macs is None else self.kept_macs

    @property
    def effective_w_bits(self) -> float:
        """Weight bits per kept channel on average (capped at 32)."""
        return min(self.w_bits if self.w_bits_mean is None else self.w_bits_mean, FLOAT_BITS)

    @property
    def w_bits_counted(self) -> int:
        """Weight bits with float counted as 32 (the maximum over channels for per-channel widths)."""
        return min(int(self.w_bits), FLOAT_BITS)

    @property
    def a_bits_counted(self) -> int:
        """Input bits with float counted as 32."""
        return min(int(self.a_bits), FLOAT_BITS)

    @property
    def w_bits_shown(self) -> float:
        """Weight bits for tables: the mean over kept channels (2 decimals) for per-channel widths, else counted."""
        return round(self.w_bits_mean, 2) if self.w_bits_mean is not None else self.w_bits_counted

    @property
    def bops(self) -> float:
        return self.effective_w_bits * min(self.a_bits, FLOAT_BITS) * self.macs * self.kept_macs_fraction

    @property
    def fp32_bops(self) -> int:
        return FLOAT_BITS * FLOAT_BITS * self.macs

    @property
    def weight_bits(self) -> float:
        """Weight memory in bits."""
        return self.effective_w_bits * self.params * self.kept_macs_fraction


def credit_input_pruning(
    costs: list[LayerCost], producers: Mapping[str, str | None], masks: Mapping[str, Tensor | None],
    shapes: Mapping[str, tuple[int, ...]],
) -> None:
    """Set ``kept_macs`` of every layer whose producer prunes channels (in place).

    ``producers``: layer -> producer layer (or None); ``masks``: layer -> bool keep mask ``[C_out]`` (None = all
    kept); ``shapes``: layer -> weight shape. A conv weight ``[C_out, C_in / groups, ...]`` gives the groups; a linear
    (2-d weight) has one, also after a flatten (every channel then has the same number of features).
    """
    for c in costs:
        prod = producers.get(c.name)
        keep_in = masks.get(prod) if prod else None
        if keep_in is None or bool(keep_in.all()):
            continue
        keep_in = keep_in.detach().to("cpu", torch.float64).view(-1)
        keep_out = masks.get(c.name)
        keep_out = (
            torch.ones(c.channels, dtype=torch.float64) if keep_out is None else keep_out.to("cpu", torch.float64)
        )
        shape = tuple(shapes[c.name])
        groups = keep_in.numel() // shape[1] if len(shape) > 2 and keep_in.numel() % shape[1] == 0 else 1
        if c.channels % groups:
            continue
        in_frac = keep_in.view(groups, -1).mean(1).repeat_interleave(c.channels // groups)  # [C_out]
        c.kept_macs = float((keep_out.view(-1) * in_frac).mean()) if c.channels else 1.0


def layer_costs(records: list[LayerRecord], modules: Mapping[str, nn.Module], input_bits: int) -> list[LayerCost]:
    """One `LayerCost` per planned layer, in network order, from the quantizers' ``hard_bits``/``keep_mask``."""
    out = []
    masks: dict[str, Tensor | None] = {}
    for rec in records:
        channels = rec.weight_shape[0]
        w_bits, kept, w_mean, mask = FLOAT_BITS, channels, None, None
        a_bits = rec.float_input_bits(input_bits)
        m = modules.get(rec.name)
        quantized = rec.wrapped and m is not None
        if quantized:
            wq = m.weight_quantizer
            w_bits = wq.hard_bits()
            mask = wq.keep_mask()
            mask = mask.cpu() if mask is not None else None  # one host read, used for the counts and the credit
            kept = int(mask.sum()) if mask is not None else channels
            per_channel = wq.channel_bits()
            if per_channel is not None:
                per_channel = per_channel.cpu()
                sel = per_channel if mask is None else per_channel[mask]
                w_mean = float(sel.float().mean()) if sel.numel() else 0.0
            iq = m.input_quantizer
            if iq is not None and iq._initialized:  # an uncalibrated input quantizer passes inputs through
                a_bits = iq.hard_bits()
        out.append(
            LayerCost(rec.name, rec.macs, rec.params, w_bits, a_bits, kept, channels, w_mean, quantized, rec.type)
        )
        masks[rec.name] = mask
    credit_input_pruning(out, {r.name: r.producer for r in records}, masks, {r.name: r.weight_shape for r in records})
    return out


def config_costs(config: Any) -> list[LayerCost]:
    """One `LayerCost` per layer of a saved `bb_lightning.MixedPrecisionConfig` (anything with ``layers`` and
    ``input_bits``), in its (network) order."""
    out = []
    masks: dict[str, Tensor | None] = {}
    for i, (name, layer) in enumerate(config.layers.items()):
        shape = layer["weight_shape"]
        channels, params = int(shape[0]), 1
        for d in shape:
            params *= int(d)
        kept = channels if layer["kept_channels"] is None else len(layer["kept_channels"])
        w_bits, w_mean = FLOAT_BITS, None
        a_bits = float_input_bits(i == 0, config.input_bits)
        if layer["quantized"]:
            w_bits = int(layer["weight"]["bits"])
            cb = layer["weight"].get("channel_bits")
            if cb:
                sel = [cb[j] for j in (range(channels) if layer["kept_channels"] is None else layer["kept_channels"])]
                w_mean = sum(sel) / len(sel) if sel else 0.0
            if layer["input"] is not None:
                a_bits = int(layer["input"]["bits"])
        out.append(
            LayerCost(name, int(layer["macs"]), params, w_bits, a_bits, kept, channels, w_mean, layer["quantized"],
                      str(layer["type"]))
        )
        if layer["kept_channels"] is not None:
            mask = torch.zeros(channels, dtype=torch.bool)
            mask[torch.as_tensor(layer["kept_channels"], dtype=torch.long)] = True
            masks[name] = mask
    layers = config.layers.items()
    credit_input_pruning(out, {n: layer.get("producer") for n, layer in layers}, masks,
                         {n: layer["weight_shape"] for n, layer in layers})
    return out


def cost_totals(costs: list[LayerCost]) -> dict[str, float]:
    """Totals over layers: BOPs (absolute and relative to w32a32), weight memory, average bits, pruned fraction."""
    bops = sum(c.bops for c in costs)
    fp32 = sum(c.fp32_bops for c in costs) or 1
    params = sum(c.params for c in costs) or 1
    mem_bits = sum(c.weight_bits for c in costs)
    channels = sum(c.channels for c in costs) or 1
    return {
        "bops": float(bops),
        "fp32_bops": float(fp32),
        "relative_bops": float(bops / fp32),
        "macs": float(sum(c.macs for c in costs)),
        "weight_memory_bytes": float(mem_bits / 8.0),
        "fp32_weight_memory_bytes": float(params * 4),
        "average_weight_bits": float(mem_bits / params),
        "mean_layer_weight_bits": float(sum(c.effective_w_bits for c in costs) / max(len(costs), 1)),
        "mean_layer_activation_bits": float(sum(c.a_bits_counted for c in costs) / max(len(costs), 1)),
        "pruned_channel_fraction": float(1.0 - sum(c.kept for c in costs) / channels),
    }


def layer_metrics(costs: list[LayerCost], prefix: str = "bb_layers") -> dict[str, float]:
    """Per-layer logger scalars ``<prefix>/<layer>/{weight_bits,input_bits,kept_channels,bops_share}``."""
    total = sum(c.bops for c in costs) or 1.0
    out: dict[str, float] = {}
    for c in costs:
        out[f"{prefix}/{c.name}/weight_bits"] = float(c.w_bits_counted)
        out[f"{prefix}/{c.name}/input_bits"] = float(c.a_bits_counted)
        out[f"{prefix}/{c.name}/kept_channels"] = float(c.kept)
        out[f"{prefix}/{c.name}/bops_share"] = c.bops / total
    return out


__all__ = ["LayerCost", "config_costs", "credit_input_pruning", "cost_totals", "layer_costs", "layer_metrics"]
