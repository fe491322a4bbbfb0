"""``bb-lightning export <run dir | config.json> [--checkpoint CKPT] [--output model.onnx]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ._api import MixedPrecisionConfig
from .export import export_onnx
from .report import removal_table
from .runs import find_run_files, load_run_model


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bb-lightning export",
        description="Write a searched model as ONNX with integer weights at the learned widths (opset 25).",
    )
    p.add_argument("target", help="a run directory (its newest exported config) or an exported config JSON")
    p.add_argument("--checkpoint", help="Lightning checkpoint with the weights (default: newest under the config's "
                   "folder, last.ckpt first)")
    p.add_argument("--output", help="the .onnx file (default: model.onnx next to the config)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--keep-pruned", action="store_true", help="keep pruned channels as zero rows (no removal)")
    return p


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the ``export`` subcommand; returns the written path."""
    args = parser().parse_args(None if argv is None else list(argv))
    files = find_run_files(args.target, args.checkpoint)
    config = MixedPrecisionConfig.load(files.config)
    model, example = load_run_model(files, config)
    output = Path(args.output) if args.output else files.config.parent / "model.onnx"
    result = export_onnx(model, config, output, example, remove_pruned=not args.keep_pruned,
                         overwrite=args.overwrite)
    print(f"bb_lightning: config     : {files.config}\nbb_lightning: checkpoint : {files.checkpoint}")
    print(removal_table(result.removal))
    print(f"bb_lightning: wrote {result.path} ({result.bytes / 1024:.1f} KiB)")
    return result.path
