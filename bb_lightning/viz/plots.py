"""Matplotlib figures of a bit allocation: bits per layer, gate histograms, layer x epoch heat map, report panels.

Every function returns a `matplotlib.figure.Figure` built without ``pyplot`` (no global state, no GUI backend), so
it is safe in training processes and threads; `save_png` writes one. Layers always appear in network order.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

    from .snapshot import BitHistory, BitSnapshot

_BIT_TICKS = (0, 2, 4, 8, 16, 32)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _width(n_layers: int) -> float:
    """Figure width in inches for ``n_layers`` bars (readable labels, capped)."""
    return float(min(40.0, max(6.0, 0.28 * n_layers + 2.0)))


def _label_axis(ax: Axes, names: Sequence[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(names) - 0.4)


def _bits_axis(ax: Axes, names: Sequence[str], w_bits: Sequence[int], a_bits: Sequence[int]) -> None:
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [max(b, 1) - 1 for b in w_bits], width=0.4, bottom=1, label="weight bits",
           color="#1f77b4")
    ax.bar([i + 0.2 for i in x], [max(b, 1) - 1 for b in a_bits], width=0.4, bottom=1, label="input bits",
           color="#ff7f0e")
    for i, w in enumerate(w_bits):
        if w == 0:
            ax.annotate("pruned", (i - 0.2, 1.05), rotation=90, fontsize=6, ha="center", va="bottom")
    # log2 axis: 2 -> 4 -> 8 bits are equal steps; bars start at 1 bit, so a pruned (0-bit) layer has no bar
    ax.set_yscale("log", base=2)
    ax.set_ylim(1, 40)
    ax.set_yticks(_BIT_TICKS[1:])
    ax.set_yticklabels([str(b) for b in _BIT_TICKS[1:]])
    ax.minorticks_off()
    ax.set_ylabel("bits (32 = float)")
    ax.legend(fontsize=7, loc="upper right")
    _label_axis(ax, names)


def bits_per_layer_figure(
    names: Sequence[str], w_bits: Sequence[int], a_bits: Sequence[int], title: str = "bits per layer"
) -> Figure:
    """Grouped bars of weight and input bits for each layer, in network order."""
    fig = _figure(_width(len(names)), 4.0)
    ax = fig.add_subplot()
    _bits_axis(ax, names, w_bits, a_bits)
    ax.set_title(title)
    return fig


def detail_histogram_figure(values: Mapping[str, Sequence[float]], title: str = "gate probabilities") -> Figure:
    """One histogram per detail column (values over layers); columns within ``[0, 1]`` share that range."""
    from matplotlib.figure import Figure

    keys = [k for k, v in values.items() if len(v)]
    cols = min(4, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig = Figure(figsize=(3.0 * cols, 2.4 * rows + 0.4))  # fixed grid: no (slow) constrained layout
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=1 - 0.45 / (2.4 * rows + 0.4), wspace=0.3, hspace=0.45)
    if not keys:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no method-specific values", ha="center", va="center")
        ax.set_axis_off()
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        v = list(values[key])
        in_unit = all(0.0 <= x <= 1.0 for x in v)
        ax.hist(v, bins=20, range=(0.0, 1.0) if in_unit else None, color="#2ca02c")
        ax.set_title(key, fontsize=9)
        ax.set_ylabel("layers", fontsize=8)
    fig.suptitle(title)
    return fig


def _heat(ax: Axes, epochs: Sequence[int], bits: Sequence[Sequence[int]], title: str) -> AxesImage:
    import numpy as np

    grid = np.array(bits, dtype=float).T  # [layers, epochs]
    # colour by log2(bits): 0 (pruned) -> 0, 2 -> 1, ..., 32 -> 5
    shown = np.where(grid > 0, np.log2(np.maximum(grid, 1.0)), 0.0)
    im = ax.imshow(shown, aspect="auto", cmap="viridis", vmin=0.0, vmax=5.0, interpolation="nearest")
    step = max(1, len(epochs) // 20)
    ax.set_xticks(range(0, len(epochs), step))
    ax.set_xticklabels([str(e) for e in epochs][::step], fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    if grid.size <= 160:  # per-cell numbers only while readable (and cheap: text is the slow part)
        for (r, c), v in np.ndenumerate(grid):
            ax.text(c, r, "x" if v == 0 else str(int(v)), ha="center", va="center", fontsize=6,
                    color="white" if shown[r, c] < 2.5 else "black")
    return im


def bit_heatmap_figure(history: BitHistory) -> Figure:
    """Layer x epoch heat maps of weight and input bits over the search (``x`` = every channel pruned).

    Laid out by hand (no constrained layout): it is redrawn every validation epoch for W&B, so it must be cheap.
    """
    from matplotlib.figure import Figure

    n, e = len(history.layers), max(1, len(history))
    label_in = 0.3 + 0.065 * max((len(name) for name in history.layers), default=4)  # y tick labels, inches
    panel_in = min(12.0, 1.5 + 0.2 * e)
    width, height = label_in + 2 * panel_in + 1.6, min(40.0, 1.3 + 0.2 * max(n, 3))
    fig = Figure(figsize=(width, height))
    if not len(history):
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no validation epoch yet", ha="center", va="center")
        ax.set_axis_off()
        return fig
    left, gap = label_in / width, 0.35 / width
    pw = panel_in / width
    bottom, top = 0.55 / height, 1.0 - 0.35 / height
    ax_w = fig.add_axes((left, bottom, pw, top - bottom))
    ax_a = fig.add_axes((left + pw + gap, bottom, pw, top - bottom), sharey=ax_w)
    cax = fig.add_axes((left + 2 * pw + 2 * gap, bottom, 0.15 / width, top - bottom))
    ax_w.set_yticks(range(n))
    ax_w.set_yticklabels(history.layers, fontsize=7)
    ax_a.tick_params(labelleft=False)
    im = _heat(ax_w, history.epochs, history.w_bits, "weight bits")
    _heat(ax_a, history.epochs, history.a_bits, "input bits")
    cbar = fig.colorbar(im, cax=cax, ticks=[0, 1, 2, 3, 4, 5])
    cbar.ax.set_yticklabels(["pruned", "2", "4", "8", "16", "32"], fontsize=7)
    return fig


def allocation_figure(
    names: Sequence[str],
    w_bits: Sequence[int],
    a_bits: Sequence[int],
    kept: Sequence[int],
    channels: Sequence[int],
    bops_share: Sequence[float],
    title: str = "",
) -> Figure:
    """Three panels per layer: bits (weights, inputs), kept/pruned output channels, share of the model's BOPs."""
    fig = _figure(_width(len(names)), 10.0)
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
    _bits_axis(ax1, names, w_bits, a_bits)
    ax1.set_title("bits per layer")
    x = range(len(names))
    pruned = [c - k for k, c in zip(kept, channels)]
    ax2.bar(x, list(kept), color="#1f77b4", label="kept")
    ax2.bar(x, pruned, bottom=list(kept), color="#d62728", label="pruned")
    ax2.set_ylabel("output channels")
    ax2.set_title("kept / pruned output channels")
    ax2.legend(fontsize=7, loc="upper right")
    ax3.bar(x, [100.0 * s for s in bops_share], color="#9467bd")
    ax3.set_ylabel("% of BOPs")
    ax3.set_title("share of the model's BOPs")
    _label_axis(ax3, names)
    if title:
        fig.suptitle(title)
    return fig


def pareto_figure(
    labels: Sequence[str], relative_bops: Sequence[float], accuracy: Sequence[float], front: Sequence[int]
) -> Figure:
    """Accuracy vs relative BOPs (log scale); the Pareto-optimal runs (indices ``front``) joined by a step line."""
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    ax.scatter([100 * b for b in relative_bops], [100 * a for a in accuracy], color="#7f7f7f", zorder=2)
    pts = sorted((100 * relative_bops[i], 100 * accuracy[i]) for i in front)
    if pts:
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="#d62728", zorder=1, label="Pareto front")
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="#d62728", zorder=3)
        ax.legend(fontsize=8)
    for label, b, a in zip(labels, relative_bops, accuracy):
        ax.annotate(label, (100 * b, 100 * a), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if all(b > 0 for b in relative_bops):
        ax.set_xscale("log")
    ax.set_xlabel("relative BOPs (% of w32a32)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs relative BOPs")
    ax.grid(True, alpha=0.3)
    return fig


def snapshot_figures(snapshot: BitSnapshot, history: BitHistory) -> dict[str, Figure]:
    """The run's pictures by file stem: bits per layer, detail (gate probability) histograms, bit heat map."""
    w_bits = [layer.weight_bits for layer in snapshot.layers]
    a_bits = [layer.activation_bits for layer in snapshot.layers]
    return {
        "bits_per_layer": bits_per_layer_figure(snapshot.names, w_bits, a_bits),
        "gate_histograms": detail_histogram_figure(snapshot.detail_values()),
        "bit_heatmap": bit_heatmap_figure(history),
    }


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG atomically (temporary file + rename) and return the path."""
    from .._io import atomic_write

    return atomic_write(path, png_bytes(fig, dpi))


__all__ = [
    "allocation_figure",
    "bit_heatmap_figure",
    "bits_per_layer_figure",
    "detail_histogram_figure",
    "pareto_figure",
    "png_bytes",
    "save_png",
    "snapshot_figures",
]
