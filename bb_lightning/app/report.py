"""``bb-lightning report``: per-layer tables, PNG and HTML reports of exported configs, and the Pareto front.

Usage::

    bb-lightning report CONFIG.json [CONFIG2.json | RUN_DIR ...] [--out DIR] [--accuracy A ...] [--labels L ...]

For each `MixedPrecisionConfig` (a JSON file, or every ``mixed_precision_config*.json`` in or below a run directory)
it prints the per-layer table and writes ``<label>.png``
(bits per layer, kept/pruned channels, share of BOPs per layer) into
``--out``; ``report.html`` gathers every config with its table and pictures. With two or more configs that have an
accuracy (``--accuracy``, one value per config, or the ``<config>.metrics.json`` sidecar that ``bb-lightning fit``
writes after testing), it also plots accuracy vs relative BOPs with the Pareto front (``pareto.png``).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cost.facts import config_costs
from ..errors import BBConfigError
from ..export import MixedPrecisionConfig

SIDECAR_SUFFIX = ".metrics.json"
#: Keys read from a sidecar as the accuracy (fraction in [0, 1]), first match wins.
ACCURACY_KEYS = ("test/acc", "accuracy", "val/acc")


# ----- sidecar ---------------------------------------------------------------------------------------------------
def sidecar_path(config_path: str | os.PathLike) -> Path:
    """``runs/x/mixed_precision_config.json`` -> ``runs/x/mixed_precision_config.metrics.json``."""
    path = Path(config_path)
    return path.with_name(path.stem + SIDECAR_SUFFIX)


def write_metrics_sidecar(config_path: str | os.PathLike, metrics: Mapping[str, float]) -> Path:
    """Write ``metrics`` (e.g. ``{"test/acc": 0.97}``) next to the config, atomically; returns the sidecar path."""
    from .._io import atomic_write

    data = json.dumps({str(k): float(v) for k, v in metrics.items()}, indent=2) + "\n"
    return atomic_write(sidecar_path(config_path), data)


def read_accuracy(config_path: str | os.PathLike) -> float | None:
    """The accuracy recorded in the config's sidecar (first of `ACCURACY_KEYS`), or ``None`` without one."""
    path = sidecar_path(config_path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BBConfigError(f"Metrics sidecar {path} is not valid JSON ({err}).") from None
    for key in ACCURACY_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), (int, float)):
            return float(data[key])
    return None


# ----- loading ---------------------------------------------------------------------------------------------------
@dataclass
class ReportEntry:
    label: str
    path: Path
    config: MixedPrecisionConfig
    accuracy: float | None = None


def find_configs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand run directories into the ``mixed_precision_config*.json`` files in or below them (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("mixed_precision_config*.json") if not f.name.endswith(SIDECAR_SUFFIX))
            if not found:
                raise BBConfigError(f"Run directory {p} holds no mixed_precision_config*.json.")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise BBConfigError(f"MixedPrecisionConfig file {p} does not exist.")
    return out


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short unique labels: the file stem, or ``parent-stem`` where stems repeat, or a numbered suffix."""
    stems = [p.stem for p in paths]
    labels = [s if stems.count(s) == 1 else f"{p.parent.name}-{s}" for p, s in zip(paths, stems)]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        label = re.sub(r"[^A-Za-z0-9_.-]", "_", label)
        n = seen.get(label, 0)
        seen[label] = n + 1
        out.append(label if n == 0 else f"{label}-{n}")
    return out


def load_entries(
    paths: Sequence[str | os.PathLike],
    accuracy: Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
) -> list[ReportEntry]:
    """Load every config (errors name the file and key); accuracies from ``accuracy`` or the sidecars."""
    files = find_configs(paths)
    if accuracy is not None and len(accuracy) != len(files):
        raise BBConfigError(
            f"Got {len(accuracy)} --accuracy values for {len(files)} configs ({', '.join(map(str, files))}); give one "
            "per config, in the same order."
        )
    if labels is not None and len(labels) != len(files):
        raise BBConfigError(f"Got {len(labels)} --labels for {len(files)} configs; give one per config.")
    names = list(labels) if labels is not None else _labels(files)
    entries = []
    for i, (path, label) in enumerate(zip(files, names)):
        acc = float(accuracy[i]) if accuracy is not None else read_accuracy(path)
        if acc is not None and not 0.0 <= acc <= 1.0:
            raise BBConfigError(f"Accuracy of {path} must be a fraction in [0, 1], got {acc!r}.")
        entries.append(ReportEntry(label, path, MixedPrecisionConfig.load(path), acc))
    return entries


# ----- per-layer data of a config --------------------------------------------------------------------------------
def layer_rows(config: MixedPrecisionConfig) -> list[dict[str, Any]]:
    """Per layer (network order), from `bb_lightning.cost.facts`: weight/input bits as counted in BOPs (float = 32,
    every channel pruned = 0, the mean over kept channels for per-channel widths), kept and total output channels,
    MACs, and share of the config's BOPs."""
    costs = config_costs(config)
    total = sum(c.bops for c in costs)
    return [
        {
            "layer": c.name,
            "type": c.type,
            "weight_bits": c.w_bits_shown,
            "input_bits": c.a_bits_counted,
            "kept": c.kept,
            "channels": c.channels,
            "macs": c.macs,
            "bops_share": c.bops / total if total else 0.0,
        }
        for c in costs
    ]


def pareto_front(relative_bops: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates (no more BOPs and no less accuracy, one strictly better).

    >>> pareto_front([0.1, 0.2, 0.3, 0.15], [0.90, 0.95, 0.94, 0.89])
    [0, 1]
    """
    points = list(zip(relative_bops, accuracy))
    return [
        i
        for i, (b, a) in enumerate(points)
        if not any(b2 <= b and a2 >= a and (b2 < b or a2 > a) for b2, a2 in points)
    ]


# ----- outputs ---------------------------------------------------------------------------------------------------
def _summary(entry: ReportEntry) -> dict[str, str]:
    t = entry.config.totals
    return {
        "config": entry.label,
        "method": entry.config.method,
        "accuracy": "-" if entry.accuracy is None else f"{100 * entry.accuracy:.2f}%",
        "relative BOPs": f"{100 * float(t.get('relative_bops', 0.0)):.3f}%",
        "weight memory": f"{float(t.get('weight_memory_bytes', 0.0)) / 1024:.1f} KiB",
        "bits/param": f"{float(t.get('average_weight_bits', 0.0)):.2f}",
        "pruned channels": f"{100 * float(t.get('pruned_channel_fraction', 0.0)):.1f}%",
    }


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def write_report(entries: Sequence[ReportEntry], out: str | os.PathLike) -> dict[str, Path]:
    """Write ``<label>.png`` per config, ``pareto.png`` (two or more configs with accuracy) and ``report.html``."""
    from .._io import atomic_write
    from ..viz.plots import allocation_figure, pareto_figure, png_bytes, save_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    sections = []
    for e in entries:
        rows = layer_rows(e.config)
        fig = allocation_figure(
            [r["layer"] for r in rows],
            [r["weight_bits"] for r in rows],
            [r["input_bits"] for r in rows],
            [r["kept"] for r in rows],
            [r["channels"] for r in rows],
            [r["bops_share"] for r in rows],
            title=f"{e.label} ({e.config.method})",
        )
        files[e.label] = save_png(fig, out / f"{e.label}.png")
        table = _html_table(
            ["#", "layer", "type", "w bits", "a bits", "kept/channels", "MACs", "BOPs %"],
            [
                [i, r["layer"], r["type"], r["weight_bits"], r["input_bits"], f"{r['kept']}/{r['channels']}",
                 f"{r['macs']:,}", f"{100 * r['bops_share']:.2f}"]
                for i, r in enumerate(rows)
            ],
        )
        summary = _summary(e)
        sections.append(
            f"<h2>{html.escape(e.label)}</h2><p>{html.escape(str(e.path))}</p>"
            + _html_table(list(summary), [list(summary.values())])
            + _img(png_bytes(fig), f"bit allocation of {e.label}")
            + table
        )
    scored = [e for e in entries if e.accuracy is not None]
    pareto_html = ""
    if len(scored) >= 2:
        bops = [float(e.config.totals["relative_bops"]) for e in scored]
        acc = [float(e.accuracy) for e in scored]  # type: ignore[arg-type]
        front = pareto_front(bops, acc)
        fig = pareto_figure([e.label for e in scored], bops, acc, front)
        files["pareto"] = save_png(fig, out / "pareto.png")
        names = ", ".join(html.escape(scored[i].label) for i in sorted(front, key=lambda i: bops[i]))
        pareto_html = f"<h2>Accuracy vs relative BOPs</h2><p>Pareto front: {names}</p>" + _img(png_bytes(fig), "Pareto")
    summaries = [_summary(e) for e in entries]
    doc = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>bb_lightning report</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}</style></head><body>"
        "<h1>bb_lightning report</h1>"
        + _html_table(list(summaries[0]), [list(s.values()) for s in summaries])
        + pareto_html
        + "".join(sections)
        + "</body></html>\n"
    )
    files["html"] = atomic_write(out / "report.html", doc)
    return files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bb-lightning report",
        description="Print per-layer tables and write PNG/HTML reports of exported MixedPrecisionConfigs; with "
        "several configs and accuracies, plot accuracy vs relative BOPs and its Pareto front.",
    )
    parser.add_argument("configs", nargs="+", help="config JSON files or run directories")
    parser.add_argument("--out", default="bb_report", help="output directory (default: ./bb_report)")
    parser.add_argument("--accuracy", type=float, nargs="+", help="one accuracy in [0, 1] per config, in order")
    parser.add_argument("--labels", nargs="+", help="one label per config (default: from the file names)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Entry point of ``bb-lightning report``; returns the written files. Bad input exits with status 2."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        entries = load_entries(args.configs, args.accuracy, args.labels)
    except BBConfigError as err:
        parser.error(str(err))
    for e in entries:
        acc = "" if e.accuracy is None else f", accuracy {100 * e.accuracy:.2f}%"
        print(f"\n== {e.label}: {e.path} ({e.config.method}{acc})\n{e.config.table()}")
    files = write_report(entries, args.out)
    scored = [e for e in entries if e.accuracy is not None]
    if len(entries) >= 2 and len(scored) < 2:
        print("\nno Pareto plot: fewer than two configs have an accuracy (pass --accuracy or write the sidecars)")
    if "pareto" in files:
        bops = [float(e.config.totals["relative_bops"]) for e in scored]
        acc = [float(e.accuracy) for e in scored if e.accuracy is not None]
        print("\nPareto front (accuracy vs relative BOPs):")
        for i in sorted(pareto_front(bops, acc), key=lambda i: bops[i]):
            print(f"  {scored[i].label}: {100 * acc[i]:.2f}% at {100 * bops[i]:.3f}% BOPs")
    print(f"\nreport: {files['html']}")
    return files


__all__ = [
    "ReportEntry",
    "find_configs",
    "layer_rows",
    "load_entries",
    "main",
    "pareto_front",
    "read_accuracy",
    "sidecar_path",
    "write_metrics_sidecar",
    "write_report",
]
