"""What the Lightning callbacks call at the end of fit when asked to write ``model.onnx``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import Tensor, nn

from ._api import MixedPrecisionConfig, unique_path
from .export import export_onnx

log = logging.getLogger(__name__)


def onnx_path_for(config_path: str | os.PathLike) -> Path:
    """``.../mixed_precision_config-v1.json`` -> ``.../model-v1.onnx``; ``.../name.json`` -> ``.../name.onnx``."""
    p = Path(config_path)
    stem = p.stem
    if stem.startswith("mixed_precision_config"):
        stem = "model" + stem[len("mixed_precision_config"):]
    return p.with_name(stem + ".onnx")


def write_onnx_next_to(
    config_path: str | os.PathLike, model: nn.Module, config: MixedPrecisionConfig | None, example_input: Tensor
) -> Path | None:
    """Export ``model`` (searched, fixed or float) quantized with ``config`` to `onnx_path_for` ``config_path``.
    Never replaces an existing file: ``model-v1.onnx``, ... instead."""
    return write_onnx_new(onnx_path_for(config_path), model, config, example_input)


def write_onnx_new(path: str | os.PathLike, model: nn.Module, config: MixedPrecisionConfig | None,
                   example_input: Tensor) -> Path | None:
    """`export_onnx` to ``path``, or ``<stem>-v1.onnx``, ... if it exists (never replaces a file). A failure is
    logged as an error (with the traceback) and returns ``None``: it must not fail a finished training run."""
    path = unique_path(path)
    try:
        result = export_onnx(model, config, path, example_input[:1])
    except Exception as err:  # the run's config and checkpoints are saved: report, do not fail the fit at its end
        log.error("bb_lightning: the ONNX export to %s failed (%s: %s); the config and checkpoints are saved, fix the "
                  "cause and run `bb-lightning export <run dir>`.", path, type(err).__name__, err, exc_info=True)
        return None
    log.info("bb_lightning: wrote %s (%.1f KiB)", result.path, result.bytes / 1024)
    return result.path
