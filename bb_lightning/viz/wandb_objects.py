"""Weights & Biases objects for a bit allocation: per-layer table, histograms, bar charts, heat map, artifact.

``wandb`` is an optional dependency (``pip install "bb_lightning[wandb]"``) and is imported only when one of these
functions runs. Nothing here logs; the caller hands the objects to ``WandbLogger.log_metrics`` on rank zero.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from .snapshot import BitHistory, BitSnapshot

INSTALL_HINT = 'pip install "bb_lightning[wandb]"'
ARTIFACT_TYPE = "mixed-precision-config"


def require_wandb(feature: str = "Logging the bit allocation to Weights & Biases") -> ModuleType:
    """Import and return ``wandb``, or raise `ModuleNotFoundError` naming ``feature`` and the install command."""
    try:
        import wandb
    except ImportError as err:
        raise ModuleNotFoundError(
            f"{feature} needs the optional dependency `wandb`, which is not installed. HINT: {INSTALL_HINT}"
        ) from err
    return wandb


def layer_table(snapshot: BitSnapshot) -> Any:
    """``wandb.Table``: one row per layer in network order; columns as `BitSnapshot.columns` (details by key)."""
    wandb = require_wandb()
    return wandb.Table(columns=snapshot.columns(), data=snapshot.rows())


def _bar(wandb: ModuleType, snapshot: BitSnapshot, attr: str, title: str) -> Any:
    # labels carry the network position, so the chart keeps network order whatever the panel sorts by
    width = len(str(max(len(snapshot.layers) - 1, 0)))
    data = [[f"{i:0{width}d} {layer.cost.name}", getattr(layer, attr)] for i, layer in enumerate(snapshot.layers)]
    table = wandb.Table(columns=["layer", "bits"], data=data)
    return wandb.plot.bar(table, "layer", "bits", title=title)


def epoch_objects(snapshot: BitSnapshot, history: BitHistory, prefix: str = "bb") -> dict[str, Any]:
    """The rich objects of one validation epoch, keyed for ``log_metrics``.

    * ``{prefix}/layers``: `layer_table`;
    * ``{prefix}/details/<column>``: ``wandb.Histogram`` of each detail column over the layers (gate probabilities);
    * ``{prefix}/weight_bits_per_layer``, ``{prefix}/input_bits_per_layer``: bar charts in network order;
    * ``{prefix}/bit_heatmap``: ``wandb.Image`` of the layer x epoch heat map of ``history``.
    """
    from .plots import bit_heatmap_figure, png_bytes

    wandb = require_wandb()
    out: dict[str, Any] = {f"{prefix}/layers": layer_table(snapshot)}
    for key, values in snapshot.detail_values().items():
        if values:
            out[f"{prefix}/details/{key}"] = wandb.Histogram(values, num_bins=20)
    out[f"{prefix}/weight_bits_per_layer"] = _bar(wandb, snapshot, "weight_bits", "weight bits per layer")
    out[f"{prefix}/input_bits_per_layer"] = _bar(wandb, snapshot, "activation_bits", "input bits per layer")
    if len(history):
        out[f"{prefix}/bit_heatmap"] = wandb.Image(png_image(png_bytes(bit_heatmap_figure(history))), caption="bits")
    return out


def png_image(data: bytes) -> Any:
    """PNG bytes -> an RGB ``PIL.Image`` (what ``wandb.Image`` takes)."""
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def config_artifact(path: str | os.PathLike, run_id: str, metadata: dict[str, Any] | None = None) -> Any:
    """A ``wandb.Artifact`` of type ``mixed-precision-config`` holding the exported config file ``path``."""
    wandb = require_wandb()
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"mixed-precision-config-{run_id}")
    artifact = wandb.Artifact(name, type=ARTIFACT_TYPE, metadata=metadata or {})
    artifact.add_file(str(path), name=Path(path).name)
    return artifact


__all__ = [
    "ARTIFACT_TYPE", "INSTALL_HINT", "config_artifact", "epoch_objects", "layer_table", "png_image", "require_wandb"
]
