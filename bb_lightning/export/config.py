"""``MixedPrecisionConfig``: the versioned, documented JSON document a search exports.

Schema (version 1)::

    {
      "format": "bb_lightning.mixed_precision_config",
      "version": 1,
      "method": "bayesian_bits",
      "input_bits": 8,                         # bits assumed for the unquantized network input (BOPs)
      "model": {"class": "ResNet",             # informative
                "bn_fold": {"conv1": {"bn": "bn1", "mode": "train"}}},  # only if BatchNorm was folded into
                                               # layers: their weights are the folded ones (apply_config folds too)
      "layers": {                              # keyed by module name relative to the model, network order
        "layer1.0.conv1": {
          "type": "Conv2d",
          "weight_shape": [64, 64, 3, 3],
          "macs": 36864,                       # per sample, counted once at set-up
          "quantized": true,                   # false: the layer stays float (first/last-layer policy)
          "weight": {"bits": 4, "signed": true, "range": [-0.21, 0.21]},
          "input": {"bits": 8, "signed": false, "range": [0.0, 3.1]},   # null: input not quantized
          "kept_channels": [0, 1, 3],          # null: every output channel kept
          "producer": "conv1",                 # optional: the layer whose output channels are this layer's
                                               # inputs; its pruned channels are credited on the input side
          "bops": 1179648.0
        }
      },
      "totals": {"relative_bops": 0.0625, "bops": ..., "fp32_bops": ..., "weight_memory_bytes": ...,
                 "fp32_weight_memory_bytes": ..., "average_weight_bits": ..., ...}
    }

Bit widths: ``0`` = every output channel pruned, ``2 .. 16`` quantized, ``32`` = float. Any integer ``>= 1`` is valid
(BitPruning exports non-powers of two).

Grids: without ``"grid"`` (Bayesian Bits) a tensor uses the symmetric grid ``[-u, u]`` (``signed``) or ``[0, u]``
with ``range = [lo, u]``. ``"grid": "minmax"`` (BitPruning) is the affine grid of ``2^bits`` levels from ``range[0]``
to ``range[1]``. A weight may also carry ``"granularity"`` of its bit widths (``"tensor"`` if absent, ``"channel"``
or ``"group:<size>"``), ``"channel_bits"`` (one integer per output channel; ``bits`` is then their maximum) and
``"channel_ranges"`` (one ``[lo, hi]`` per output channel, min-max grids only)::

    "weight": {"bits": 6, "signed": true, "range": [-0.4, 0.5], "grid": "minmax", "granularity": "group:8",
               "channel_bits": [3, 3, ..., 6, ...], "channel_ranges": [[-0.3, 0.2], [-0.4, 0.5], ...]}
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_write
from ..cost.facts import config_costs
from ..errors import BBConfigError
from .check import check_model

FORMAT = "bb_lightning.mixed_precision_config"
VERSION = 1
_LAYER_KEYS = {"type", "weight_shape", "macs", "quantized", "weight", "input", "kept_channels", "bops"}
_OPTIONAL_LAYER_KEYS = {"producer"}
_TENSOR_KEYS = {"bits", "signed", "range"}
_OPTIONAL_TENSOR_KEYS = {"grid", "granularity", "channel_bits", "channel_ranges"}
#: ``"symmetric"``: ``[-u, u]`` / ``[0, u]`` (Bayesian Bits); ``"minmax"``: affine ``[lo, hi]`` (BitPruning)
GRIDS = ("symmetric", "minmax")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fail(where: str, msg: str) -> BBConfigError:
    return BBConfigError(f"{where}: {msg}")


def _check_keys(where: str, d: Any, keys: set[str]) -> None:
    """``d`` must be a JSON object with exactly ``keys``."""
    if not isinstance(d, dict):
        raise _fail(where, f"expected an object with keys {sorted(keys)}, got {type(d).__name__}")
    missing, unknown = keys - d.keys(), d.keys() - keys
    if missing or unknown:
        raise _fail(where, f"missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")


def _is_range(rng: Any) -> bool:
    return (
        isinstance(rng, list)
        and len(rng) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in rng)
    )


def _check_tensor(where: str, spec: Any, channels: int | None = None) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise _fail(where, f"expected an object with keys {sorted(_TENSOR_KEYS)}, got {type(spec).__name__}")
    _check_keys(where, {k: v for k, v in spec.items() if k not in _OPTIONAL_TENSOR_KEYS}, _TENSOR_KEYS)
    bits = spec["bits"]
    if not _int(bits) or bits < 0:
        raise _fail(f"{where}.bits", f"expected an integer >= 0 (0 = pruned, 32 = float), got {bits!r}")
    if not isinstance(spec["signed"], bool):
        raise _fail(f"{where}.signed", f"expected true/false, got {spec['signed']!r}")
    grid = spec.get("grid", "symmetric")
    if grid not in GRIDS:
        raise _fail(f"{where}.grid", f"expected one of {list(GRIDS)}, got {grid!r}")
    rng = spec["range"]
    if grid == "minmax":
        if not _is_range(rng) or not rng[0] <= rng[1]:
            raise _fail(f"{where}.range", f"expected [lo, hi] numbers with lo <= hi, got {rng!r}")
    elif not _is_range(rng) or not rng[1] > 0:
        raise _fail(f"{where}.range", f"expected [lo, hi] numbers with hi > 0, got {rng!r}")
    gran = spec.get("granularity", "tensor")
    if not isinstance(gran, str) or not (
        gran in ("tensor", "channel") or (gran.startswith("group:") and gran[6:].isdigit() and int(gran[6:]) > 0)
    ):
        raise _fail(f"{where}.granularity", f"expected 'tensor', 'channel' or 'group:<size>', got {gran!r}")
    if "channel_bits" in spec:
        cb = spec["channel_bits"]
        if (
            channels is None
            or not isinstance(cb, list)
            or len(cb) != channels
            or not all(_int(b) and 1 <= b <= bits for b in cb)
        ):
            raise _fail(
                f"{where}.channel_bits",
                f"expected one integer in [1, bits={bits}] per output channel ({channels}) of a weight",
            )
    if "channel_ranges" in spec:
        cr = spec["channel_ranges"]
        if (
            grid != "minmax"
            or channels is None
            or not isinstance(cr, list)
            or len(cr) != channels
            or not all(_is_range(r) and r[0] <= r[1] for r in cr)
        ):
            raise _fail(
                f"{where}.channel_ranges",
                f"expected one [lo, hi] (lo <= hi) per output channel ({channels}) of a weight on a minmax grid",
            )
    return spec


def _check_layer(name: str, d: Any) -> dict[str, Any]:
    where = f"layers[{name!r}]"
    _check_keys(where, {k: v for k, v in d.items() if k not in _OPTIONAL_LAYER_KEYS} if isinstance(d, dict) else d,
                _LAYER_KEYS)
    shape = d["weight_shape"]
    if not isinstance(shape, list) or not shape or not all(_int(v) and v > 0 for v in shape):
        raise _fail(f"{where}.weight_shape", f"expected a list of positive ints, got {shape!r}")
    if not isinstance(d["quantized"], bool):
        raise _fail(f"{where}.quantized", f"expected true/false, got {d['quantized']!r}")
    if d["quantized"]:
        _check_tensor(f"{where}.weight", d["weight"], shape[0])
        if d["input"] is not None:
            _check_tensor(f"{where}.input", d["input"])
    kept = d["kept_channels"]
    if kept is not None and (
        not isinstance(kept, list) or not all(_int(i) and 0 <= i < shape[0] for i in kept)
    ):
        raise _fail(f"{where}.kept_channels", f"expected null or a list of channel indices < {shape[0]}")
    return d


@dataclass
class MixedPrecisionConfig:
    """Per-layer bit widths, ranges and kept channels of a searched model, plus totals. See the module docstring."""

    method: str
    layers: dict[str, dict[str, Any]]
    totals: dict[str, float]
    input_bits: int = 8
    model: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION

    # ----- (de)serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "method": self.method,
            "input_bits": self.input_bits,
            "model": self.model,
            "layers": self.layers,
            "totals": self.totals,
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "config") -> MixedPrecisionConfig:
        """Validate and build; every error names ``source`` and the offending key."""
        try:
            if not isinstance(d, dict):
                raise _fail("top level", f"expected a JSON object, got {type(d).__name__}")
            if d.get("format") != FORMAT:
                raise _fail("format", f"expected {FORMAT!r}, got {d.get('format')!r}")
            if d.get("version") != VERSION:
                raise _fail("version", f"unsupported version {d.get('version')!r}; this bb_lightning reads {VERSION}")
            allowed = {"format", "version", "method", "input_bits", "model", "layers", "totals"}
            unknown = d.keys() - allowed
            if unknown:
                raise _fail("top level", f"unknown keys {sorted(unknown)}; allowed {sorted(allowed)}")
            for key in ("method", "layers", "totals"):
                if key not in d:
                    raise _fail(key, "missing")
            if not isinstance(d["layers"], dict) or not d["layers"]:
                raise _fail("layers", "expected a non-empty object keyed by module name")
            layers = {name: _check_layer(name, spec) for name, spec in d["layers"].items()}
            for name, spec in layers.items():
                prod = spec.get("producer")
                if prod is not None and (not isinstance(prod, str) or prod not in layers or prod == name):
                    raise _fail(f"layers[{name!r}].producer", f"expected null or another layer's name, got {prod!r}")
            if not isinstance(d["totals"], dict):
                raise _fail("totals", "expected an object")
            if not isinstance(d["method"], str) or not d["method"]:
                raise _fail("method", f"expected a method name, got {d['method']!r}")
            if not isinstance(d.get("model", {}), dict):
                raise _fail("model", f"expected an object, got {type(d['model']).__name__}")
            folds = d.get("model", {}).get("bn_fold", {})
            if not isinstance(folds, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("bn"), str) and v.get("mode") in ("train", "static")
                for v in folds.values()
            ):
                raise _fail(
                    "model.bn_fold", 'expected {"<layer>": {"bn": "<BatchNorm name>", "mode": "train" or "static"}}'
                )
            input_bits = d.get("input_bits", 8)
            if not _int(input_bits) or not 1 <= input_bits <= 32:
                raise _fail("input_bits", f"expected an integer in [1, 32], got {input_bits!r}")
            return cls(
                method=str(d["method"]),
                layers=layers,
                totals=dict(d["totals"]),
                input_bits=int(d.get("input_bits", 8)),
                model=dict(d.get("model", {})),
            )
        except BBConfigError as err:
            raise BBConfigError(f"Invalid MixedPrecisionConfig in {source}: {err}") from None

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write JSON atomically (`bb_lightning._io.atomic_write`: a crash or a full disk never leaves a half-written
        file); missing parent folders are created. Without ``overwrite`` an existing ``path`` raises
        `FileExistsError`, also when another process creates it while this one writes. Returns ``path``."""
        text = io.StringIO()
        json.dump(self.to_dict(), text, indent=2)
        text.write("\n")
        return atomic_write(path, text.getvalue(), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, model: Any = None) -> MixedPrecisionConfig:
        """Read and validate a saved config; errors name the file and the key at fault.

        Args:
            path: a JSON file written by :meth:`save`.
            model: optionally, the float model the config will be applied to; every layer name and weight shape
                is checked against it and all mismatches are reported at once.
        """
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise BBConfigError(f"MixedPrecisionConfig file {path} does not exist.") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise BBConfigError(f"Invalid MixedPrecisionConfig in {path}: not JSON ({err}).") from None
        config = cls.from_dict(data, source=str(path))
        if model is not None:
            try:
                check_model(model, config)
            except BBConfigError as err:
                raise BBConfigError(f"{path}: {err}") from None
        return config

    # ----- for humans ---------------------------------------------------------------------------------------
    def table(self) -> str:
        """A fixed-width per-layer table: weight/input bits, kept channels, share of total BOPs
        (`bb_lightning.cost.facts`)."""
        costs = config_costs(self)
        total = sum(c.bops for c in costs) or 1.0
        width = max(12, *(len(c.name) for c in costs))
        head = f"{'layer':<{width}}  {'type':<16} {'w bits':>6} {'a bits':>6} {'kept':>11} {'MACs':>12} {'BOPs %':>7}"
        lines = [head, "-" * len(head)]
        for c, layer in zip(costs, self.layers.values()):
            if c.quantized:
                cb = layer["weight"].get("channel_bits")
                w = f"{min(cb)}-{max(cb)}" if cb and min(cb) != max(cb) else str(c.w_bits)
                a = "-" if layer["input"] is None else str(c.a_bits)
            else:
                w, a = "float", "float"
            lines.append(
                f"{c.name:<{width}}  {c.type[:16]:<16} {w:>6} {a:>6} {f'{c.kept}/{c.channels}':>11} "
                f"{c.macs:>12,} {100.0 * c.bops / total:>6.2f}%"
            )
        t = self.totals
        lines.append("-" * len(head))
        lines.append(
            f"relative BOPs {100 * t.get('relative_bops', 0):.3f}% of w32a32 | weight memory "
            f"{t.get('weight_memory_bytes', 0) / 1024:.1f} KiB ({t.get('average_weight_bits', 0):.2f} bits/param) | "
            f"pruned channels {100 * t.get('pruned_channel_fraction', 0):.1f}%"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
