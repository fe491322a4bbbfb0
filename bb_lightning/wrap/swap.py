"""Plan which layers to wrap (one counting forward pass) and apply the plan with a given method.

The plan is a list of `bb_lightning.cost.record.LayerRecord` (re-exported here).
"""

from __future__ import annotations

import fnmatch
import warnings
from typing import Any

from torch import Tensor, nn

from .._registry import get_method
from ..config import FirstLayer, LastLayer, WrapConfig
from ..cost.channels import find_producers
from ..cost.macs import count_macs
from ..cost.record import LayerRecord
from ..errors import BBConfigError
from ..methods.base import QuantizerBase
from .adapters import get_adapter, is_candidate
from .bn_fold import find_bn_pairs, fold_pairs
from .layers import is_wrapped, wrap_layer


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def plan_layers(root: nn.Module, cfg: WrapConfig, example: Tensor) -> list[LayerRecord]:
    """Plan every conv/linear layer of ``root`` and count its MACs on ``example`` (batch first).

    Records come in execution order; layers that are excluded, float by policy, or never ran get
    ``wrapped=False`` (they count as 32-bit in the cost model and appear as float layers in the export).

    Raises:
        BBConfigError: no candidate layer, or an ``include`` pattern that matches nothing.
        UnsupportedLayerError: a selected layer whose type overrides ``forward`` and has no adapter.
    """
    candidates = {n: m for n, m in root.named_modules() if is_candidate(m) and not is_wrapped(m)}
    if not candidates:
        raise BBConfigError(
            f"Model `{type(root).__name__}` has no nn.Conv1d / nn.Conv2d / nn.Linear layer to quantize."
        )
    for pattern in cfg.include_patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in candidates):
            raise BBConfigError(
                f"`include` pattern {pattern!r} matches no conv/linear layer. Candidates: {sorted(candidates)[:20]}"
            )
    selected = {
        n: m
        for n, m in candidates.items()
        if (not cfg.include_patterns or _matches(n, cfg.include_patterns)) and not _matches(n, cfg.exclude_patterns)
    }
    if not selected:
        raise BBConfigError(f"`include`/`exclude` leave no layer of `{type(root).__name__}` to quantize.")
    for n, m in selected.items():
        get_adapter(m, n)  # raises UnsupportedLayerError early, naming the layer
    # count every candidate: excluded layers stay float but still cost 32x32-bit BOPs (spec 4.1)
    counts = count_macs(root, candidates, example)
    skipped = sorted(n for n in selected if n not in counts)
    if skipped:
        warnings.warn(
            f"These layers did not run through their own forward on the example input and are left float: {skipped}",
            stacklevel=2,
        )
    folds = find_bn_pairs(root, example) if cfg.fold_bn.value != "none" else {}
    producers = find_producers(root, {n: candidates[n] for n in counts}, example)
    ordered = sorted(counts, key=lambda n: counts[n].order)
    if not any(n in selected for n in ordered):
        raise BBConfigError(f"None of the selected layers of `{type(root).__name__}` ran on the example input.")
    records = []
    for i, name in enumerate(ordered):
        m = candidates[name]
        first, last = i == 0, i == len(ordered) - 1
        wrapped, q_in, prune = name in selected, cfg.quantize_activations, True
        if first:
            if cfg.first_layer == FirstLayer.FLOAT:
                wrapped = False
            elif cfg.first_layer == FirstLayer.WEIGHTS_ONLY:
                q_in = False
        if last:
            if cfg.last_layer == LastLayer.FLOAT:
                wrapped = False
            elif cfg.last_layer == LastLayer.NO_PRUNE:
                prune = False
        records.append(
            LayerRecord(
                name=name,
                type=type(m).__name__,
                weight_shape=tuple(m.weight.shape),
                macs=counts[name].macs,
                wrapped=wrapped,
                quantize_input=wrapped and q_in,
                prune=wrapped and prune,
                is_first=first,
                is_last=last,
                input_numel=counts[name].input_numel,
                bn=folds.get(name) if wrapped else None,
                fold_bn=cfg.fold_bn.value if wrapped and name in folds else "none",
                producer=producers.get(name),
            )
        )
    # layers that never ran (e.g. nn.MultiheadAttention.out_proj): float, 0 MACs, listed so the export names
    # every conv/linear of the model
    for name in sorted(set(candidates) - set(counts)):
        m = candidates[name]
        records.append(LayerRecord(name, type(m).__name__, tuple(m.weight.shape), 0, False, False, False))
    if not any(r.wrapped for r in records):
        raise BBConfigError("The first/last-layer policies leave no layer to quantize.")
    return records


def apply_plan(
    root: nn.Module, records: list[LayerRecord], method: str, method_config: Any
) -> dict[str, nn.Module]:
    """Wrap the planned layers of ``root`` in place with quantizers of ``method``; returns name -> layer.

    A BatchNorm recorded for a layer is folded into it first (``rec.fold_bn``). Weight ranges are initialised from
    the (folded) weights immediately; input ranges at the first training batch.
    """
    entry = get_method(method)
    modules = dict(root.named_modules())
    wrapped: dict[str, nn.Module] = {}
    for rec in records:
        if not rec.wrapped:
            continue
        m = modules.get(rec.name)
        if m is None:
            raise BBConfigError(f"Layer `{rec.name}` from the plan does not exist in `{type(root).__name__}`.")
        if is_wrapped(m):
            wrapped[rec.name] = m
            continue
        if tuple(m.weight.shape) != tuple(rec.weight_shape):
            raise BBConfigError(
                f"Layer `{rec.name}` has weight shape {tuple(m.weight.shape)}, the plan expects {rec.weight_shape}."
            )
        if rec.bn is not None:
            fold_pairs(root, {rec.name: rec.bn}, rec.fold_bn)
        adapter = get_adapter(m, rec.name)
        wq: QuantizerBase = entry.quantizer(method_config, "weight", int(m.weight.shape[0]), rec.prune)
        wq.to(m.weight.device)
        wq.layer_name = rec.name  # before calibration, for its error messages
        wq.init_range(adapter.weight(m))
        iq = entry.quantizer(method_config, "input", None, False).to(m.weight.device) if rec.quantize_input else None
        wrap_layer(m, wq, iq, rec.name)
        wrapped[rec.name] = m
    return wrapped


__all__ = ["LayerRecord", "apply_plan", "plan_layers"]
