"""A method-agnostic per-layer snapshot of a wrapped model, and its history over a search.

The snapshot reads only the shared interface: `LayerCost` (bits, MACs, kept channels) from `bb_lightning.cost.facts`
and each quantizer's `QuantizerBase.log_details` (method-specific values, e.g. Bayesian Bits' gate probabilities).
Detail columns are prefixed ``w_`` (weight quantizer) or ``a_`` (input quantizer).

>>> from bb_lightning.cost.facts import LayerCost
>>> snap = BitSnapshot([LayerSnapshot(LayerCost("fc", 100, 100, 4, 8, 5, 10), True, {"w_gate_4": 0.9})], {})
>>> snap.columns(), snap.detail_columns()
(['index', 'layer', 'macs', 'weight_bits', 'activation_bits', 'kept_channels', 'channels', 'bops_share', \
'w_gate_4'], ['w_gate_4'])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..cost.facts import LayerCost, cost_totals, layer_costs
from ..cost.record import LayerRecord
from ..methods.base import Regularizer

#: Scalar metric names (logged every validation epoch) and the `cost_totals` key each one reads.
SCALAR_TOTALS = {
    "bb/relative_bops": "relative_bops",
    "bb/weight_memory_bytes": "weight_memory_bytes",
    "bb/average_weight_bits": "average_weight_bits",
    "bb/mean_weight_bits": "mean_layer_weight_bits",
    "bb/mean_activation_bits": "mean_layer_activation_bits",
    "bb/pruned_fraction": "pruned_channel_fraction",
}
_BASE_COLUMNS = ["index", "layer", "macs", "weight_bits", "activation_bits", "kept_channels", "channels", "bops_share"]


@dataclass
class LayerSnapshot:
    """One planned conv/linear layer: its cost entry, whether it is quantized, and its quantizers' details."""

    cost: LayerCost
    quantized: bool
    details: dict[str, float] = field(default_factory=dict)

    @property
    def weight_bits(self) -> int:
        """Weight bits, float counted as 32, 0 if every output channel is pruned."""
        return self.cost.w_bits_counted

    @property
    def activation_bits(self) -> int:
        """Input bits, float counted as 32 (the first layer's unquantized input counts at ``input_bits``)."""
        return self.cost.a_bits_counted


@dataclass
class BitSnapshot:
    """Every planned layer (network order), the cost totals, and the regulariser's value and strength."""

    layers: list[LayerSnapshot]
    totals: dict[str, float]
    regularizer: float | None = None
    strength: float | None = None

    @property
    def names(self) -> list[str]:
        return [layer.cost.name for layer in self.layers]

    def bops_shares(self) -> list[float]:
        """Each layer's share of the model's BOPs (sums to 1; all 0 if the model has no BOPs)."""
        total = sum(layer.cost.bops for layer in self.layers)
        return [layer.cost.bops / total if total else 0.0 for layer in self.layers]

    def scalars(self) -> dict[str, float]:
        """``bb/*`` scalars: see `SCALAR_TOTALS`, plus ``bb/regularizer`` (``sum_k R_k``) and ``bb/strength``."""
        out = {name: float(self.totals[key]) for name, key in SCALAR_TOTALS.items()}
        if self.regularizer is not None:
            out["bb/regularizer"] = float(self.regularizer)
        if self.strength is not None:
            out["bb/strength"] = float(self.strength)
        return out

    def detail_columns(self) -> list[str]:
        """The union of the layers' detail keys, in first-seen order."""
        seen: dict[str, None] = {}
        for layer in self.layers:
            seen.update(dict.fromkeys(layer.details))
        return list(seen)

    def columns(self) -> list[str]:
        return _BASE_COLUMNS + self.detail_columns()

    def rows(self) -> list[list[Any]]:
        """One row per layer in network order, matching `columns`; a missing detail is ``None``."""
        details = self.detail_columns()
        return [
            [
                i,
                layer.cost.name,
                int(layer.cost.macs),
                layer.weight_bits,
                layer.activation_bits,
                int(layer.cost.kept),
                int(layer.cost.channels),
                share,
                *(layer.details.get(k) for k in details),
            ]
            for i, (layer, share) in enumerate(zip(self.layers, self.bops_shares()))
        ]

    def detail_values(self) -> dict[str, list[float]]:
        """Per detail column, its values over the layers that have it (for histograms)."""
        return {k: [layer.details[k] for layer in self.layers if k in layer.details] for k in self.detail_columns()}


@torch.no_grad()
def take_snapshot(
    records: list[LayerRecord],
    modules: Mapping[str, nn.Module],
    input_bits: int,
    regularizer: Regularizer | None = None,
) -> BitSnapshot:
    """Snapshot the wrapped ``modules`` of the planned ``records`` (deterministic bits, as exported).

    One host read per quantizer for the bits (as `layer_costs`) and one for all details together.
    """
    costs = layer_costs(records, modules, input_bits)
    keys: list[tuple[int, str]] = []
    values: list[torch.Tensor] = []
    for i, rec in enumerate(records):
        m = modules.get(rec.name)
        if not rec.wrapped or m is None:
            continue
        for prefix, q in (("w_", m.weight_quantizer), ("a_", m.input_quantizer)):
            if q is None:
                continue
            for key, value in q.log_details().items():
                keys.append((i, prefix + key))
                values.append(value.detach().float().mean())
    flat = torch.stack([v.to(values[0].device) for v in values]).tolist() if values else []
    details: list[dict[str, float]] = [{} for _ in records]
    for (i, key), value in zip(keys, flat):
        details[i][key] = float(value)
    layers = [
        LayerSnapshot(cost, bool(rec.wrapped and modules.get(rec.name) is not None), d)
        for rec, cost, d in zip(records, costs, details)
    ]
    reg = strength = None
    if regularizer is not None:
        reg, strength = float(regularizer.raw()), regularizer.strength
    return BitSnapshot(layers, cost_totals(costs), reg, strength)


@dataclass
class BitHistory:
    """Weight and input bits of every layer at each validation epoch (for the layer x epoch heat map).

    ``w_bits[e][l]`` is layer ``layers[l]``'s weight bits at epoch ``epochs[e]``. Plain lists, so it goes into a
    callback's ``state_dict`` and survives a resume.
    """

    layers: list[str] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    w_bits: list[list[int]] = field(default_factory=list)
    a_bits: list[list[int]] = field(default_factory=list)

    def append(self, epoch: int, snapshot: BitSnapshot) -> None:
        """Record ``snapshot`` at ``epoch``; a second validation in the same epoch replaces the first.

        A snapshot of different layers (another model) starts a new history.
        """
        if snapshot.names != self.layers:
            self.layers, self.epochs, self.w_bits, self.a_bits = list(snapshot.names), [], [], []
        w = [layer.weight_bits for layer in snapshot.layers]
        a = [layer.activation_bits for layer in snapshot.layers]
        if self.epochs and self.epochs[-1] == epoch:
            self.w_bits[-1], self.a_bits[-1] = w, a
        else:
            self.epochs.append(int(epoch))
            self.w_bits.append(w)
            self.a_bits.append(a)

    def __len__(self) -> int:
        return len(self.epochs)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "epochs": list(self.epochs), "w_bits": self.w_bits, "a_bits": self.a_bits}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> BitHistory:
        if not d:
            return cls()
        return cls(
            list(d["layers"]),
            [int(e) for e in d["epochs"]],
            [list(map(int, r)) for r in d["w_bits"]],
            [list(map(int, r)) for r in d["a_bits"]],
        )


__all__ = ["BitHistory", "BitSnapshot", "LayerSnapshot", "SCALAR_TOTALS", "take_snapshot"]
