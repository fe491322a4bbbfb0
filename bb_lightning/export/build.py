"""Build a `MixedPrecisionConfig` from a wrapped model (deterministic bit widths, ranges, masks)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..cost.facts import cost_totals, layer_costs
from ..cost.record import LayerRecord
from ..methods.base import QuantizerBase
from .config import MixedPrecisionConfig


def _tensor_spec(q: QuantizerBase) -> dict:
    lo, hi = q.range()
    spec = {"bits": int(q.hard_bits()), "signed": bool(q._signed), "range": [lo, hi]}
    if q.grid != "symmetric":
        spec["grid"] = q.grid
    per_channel = q.channel_bits()
    if per_channel is not None:
        spec["granularity"] = q.granularity()
        spec["channel_bits"] = [int(b) for b in per_channel.tolist()]
    ranges = q.channel_ranges()
    if ranges is not None:
        spec["channel_ranges"] = [[float(a), float(b)] for a, b in ranges.tolist()]
    return spec


def build_config(
    records: list[LayerRecord],
    modules: Mapping[str, nn.Module],
    method: str,
    input_bits: int,
    model_class: str = "",
) -> MixedPrecisionConfig:
    """Snapshot the wrapped layers ``modules`` (name -> layer) of the planned ``records``."""
    costs = {c.name: c for c in layer_costs(records, modules, input_bits)}
    layers = {}
    for rec in records:
        m = modules.get(rec.name)
        entry = {
            "type": rec.type,
            "weight_shape": list(rec.weight_shape),
            "macs": int(rec.macs),
            "quantized": bool(rec.wrapped and m is not None),
            "weight": None,
            "input": None,
            "kept_channels": None,
            "producer": rec.producer,
            "bops": float(costs[rec.name].bops),
        }
        if entry["quantized"]:
            m.weight_quantizer.observe_weight(m._bb_adapter.weight(m).detach())  # ranges of the final weights
            entry["weight"] = _tensor_spec(m.weight_quantizer)
            if m.input_quantizer is not None and m.input_quantizer._initialized:
                entry["input"] = _tensor_spec(m.input_quantizer)
            mask = m.weight_quantizer.keep_mask()
            if mask is not None and not bool(mask.all()):
                entry["kept_channels"] = [int(i) for i in mask.nonzero().view(-1).tolist()]
        layers[rec.name] = entry
    model: dict = {"class": model_class}
    folds = {r.name: {"bn": r.bn, "mode": r.fold_bn} for r in records if r.bn is not None and r.fold_bn != "none"}
    if folds:  # the weights these ranges/bits describe are BN-folded: `apply_config` folds the same pairs
        model["bn_fold"] = folds
    return MixedPrecisionConfig(
        method=method,
        layers=layers,
        totals=cost_totals(list(costs.values())),
        input_bits=input_bits,
        model=model,
    )
