"""BOPs and weight memory of a wrapped model, from the deterministic (exported) bit widths.

Convention (Bayesian Bits spec, section 4): for each conv/linear layer ``l``::

    BOPs_l = b_w(l) * b_a(l) * MACs_l * kept_l          kept_l = kept output channels / C_out
    relative BOPs = sum_l BOPs_l / sum_l (32 * 32 * MACs_l)

``b_a`` of the first layer, whose input (the image) is not quantized, is ``input_bits`` (8). Widths of 32 and more are
float and count as 32. Input-side pruning savings (channels removed by the producer) are not credited, as for the
reference's residual-stream layers; weight memory is ``sum_l b_w(l) * params_l * kept_l`` bits.

>>> c = LayerCost("fc", macs=100, params=100, w_bits=8, a_bits=8, kept=5, channels=10)
>>> c.bops, c.fp32_bops, c.weight_bits
(3200.0, 102400, 400.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from ..wrap.swap import LayerRecord

FLOAT_BITS = 32


@dataclass
class LayerCost:
    name: str
    macs: int
    params: int
    w_bits: int
    a_bits: int
    kept: int
    channels: int
    #: mean weight bits over the kept channels when they differ per channel (``w_bits`` is then their maximum)
    w_bits_mean: float | None = None

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.channels if self.channels else 1.0

    @property
    def effective_w_bits(self) -> float:
        """Weight bits per kept channel on average (capped at 32)."""
        return min(self.w_bits if self.w_bits_mean is None else self.w_bits_mean, FLOAT_BITS)

    @property
    def bops(self) -> float:
        return self.effective_w_bits * min(self.a_bits, FLOAT_BITS) * self.macs * self.kept_fraction

    @property
    def fp32_bops(self) -> int:
        return FLOAT_BITS * FLOAT_BITS * self.macs

    @property
    def weight_bits(self) -> float:
        return self.effective_w_bits * self.params * self.kept_fraction


def layer_costs(records: list[LayerRecord], modules: Mapping[str, nn.Module], input_bits: int) -> list[LayerCost]:
    """One `LayerCost` per planned layer, in network order, from the quantizers' ``hard_bits``/``keep_mask``."""
    out = []
    for rec in records:
        channels = rec.weight_shape[0]
        w_bits, a_bits, kept, w_mean = FLOAT_BITS, FLOAT_BITS, channels, None
        if rec.is_first:
            a_bits = input_bits
        m = modules.get(rec.name)
        if rec.wrapped and m is not None:
            wq = m.weight_quantizer
            w_bits = wq.hard_bits()
            mask = wq.keep_mask()
            kept = int(mask.sum()) if mask is not None else channels
            per_channel = wq.channel_bits()
            if per_channel is not None:
                sel = per_channel if mask is None else per_channel[mask]
                w_mean = float(sel.float().mean()) if sel.numel() else 0.0
            iq = m.input_quantizer
            if iq is not None and iq._initialized:  # an uncalibrated input quantizer passes inputs through
                a_bits = iq.hard_bits()
        out.append(LayerCost(rec.name, rec.macs, rec.params, w_bits, a_bits, kept, channels, w_mean))
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
        "mean_layer_activation_bits": float(sum(min(c.a_bits, FLOAT_BITS) for c in costs) / max(len(costs), 1)),
        "pruned_channel_fraction": float(1.0 - sum(c.kept for c in costs) / channels),
    }
