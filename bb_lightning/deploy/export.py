"""`export_onnx`: a fixed mixed-precision model as an ONNX file with integer weights, input Q/DQ and pruned
channels removed; written atomically, checked with ``onnx.checker`` (full check)."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from typing import Any

import torch
from torch import Tensor, nn

from ._api import MixedPrecisionConfig, atomic_write
from .build import to_deploy_model

log = logging.getLogger(__name__)


def require_deploy_deps() -> None:
    """Raise an ImportError that says how to install the optional deploy dependencies."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"bb_lightning's ONNX export needs the `deploy` extra ({err.name} is missing): "
            "pip install 'bb_lightning[deploy]'"
        ) from None


@dataclass
class ExportResult:
    """What `export_onnx` wrote.

    Attributes:
        path: the ONNX file.
        layers: ``{layer: {"weight": container ("INT4", "UINT8", "FLOAT", ...), "input": container or None}}``.
        removal: per-layer channel removal report (`bb_lightning.deploy.prune.remove_pruned_channels`).
        bytes: file size.
        model: the PyTorch deploy model the file was written from (`to_deploy_model`).
    """

    path: Path
    layers: dict[str, dict] = field(default_factory=dict)
    removal: list[dict] = field(default_factory=list)
    bytes: int = 0
    model: nn.Module | None = None


def build_onnx(deploy_model: nn.Module, example_input: Tensor, dynamic_batch: bool = True) -> tuple[Any, dict]:
    """The rewritten, checked ``onnx.ModelProto`` of a deploy model (`to_deploy_model`), in memory, and the
    per-layer container summary."""
    import onnx

    from .graph import OPSET, export_float, rewrite

    with tempfile.TemporaryDirectory(prefix="bb_onnx_") as d:
        proto, marks = export_float(deploy_model, example_input, Path(d) / "float.onnx", dynamic_batch)
    summary = rewrite(proto, deploy_model, marks)
    if all(op.domain in ("", "ai.onnx") for op in proto.opset_import):
        del proto.opset_import[:]
        proto.opset_import.append(onnx.helper.make_opsetid("", OPSET))
    proto.producer_name = "bb_lightning"
    onnx.checker.check_model(proto, full_check=True)
    return proto, summary


def export_onnx(
    model: nn.Module,
    config: MixedPrecisionConfig | str | os.PathLike | None,
    path: str | os.PathLike,
    example_input: Tensor,
    remove_pruned: bool = True,
    overwrite: bool = False,
    dynamic_batch: bool = True,
) -> ExportResult:
    """Write ``model`` quantized with ``config`` as an ONNX file (opset 25) that onnxruntime runs.

    Every quantized weight is an integer initializer in the narrowest container for its width (2 -> INT2,
    3-4 -> INT4, 5-8 -> INT8, 9-16 -> INT16; unsigned types for unsigned/min-max codes) followed by
    ``DequantizeLinear`` (per-channel ``axis`` where scales differ: per-channel ranges or a folded BatchNorm);
    32-bit weights stay float. Each quantized input is ``QuantizeLinear -> (Clip) -> DequantizeLinear`` with the
    learned range. Pruned channels are removed where that is exact (``remove_pruned``). The export asserts that the
    codes rebuild the fixed model's quantized weights bit for bit; open the file with `ort_session`.

    Args:
        model: float model with the trained weights (or the result of `apply_config`, or a searched model).
        config: the `MixedPrecisionConfig` or its JSON path (``None`` if ``model`` already has fixed quantizers).
        path: the ``.onnx`` file to write (parent folders are created).
        example_input: an input batch, e.g. ``torch.zeros(1, 3, 224, 224)``; the batch size stays dynamic.
        remove_pruned: physically remove the pruned channels whose removal changes no output.
        overwrite: replace an existing file (otherwise `FileExistsError`).
        dynamic_batch: export the batch dimension as dynamic.

    Returns:
        An `ExportResult` (path, per-layer containers, removal report, file size).
    """
    require_deploy_deps()
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it.")
    if isinstance(config, (str, os.PathLike)):
        config = MixedPrecisionConfig.load(config)
    example_input = example_input.detach().to(next(model.parameters()).device).float()
    with torch.no_grad():
        dep = to_deploy_model(model, config, example_input, remove_pruned=remove_pruned).cpu()
        proto, summary = build_onnx(dep, example_input.cpu(), dynamic_batch)
    atomic_write(path, proto.SerializeToString(), overwrite=overwrite)  # never a half-written file
    result = ExportResult(path, summary, list(dep.bb_removal_report), path.stat().st_size, dep)
    removed = sum(r["removed"] for r in result.removal)
    kept = sum(r["kept_zero"] for r in result.removal)
    log.info("bb_lightning: wrote %s (%.1f KiB); pruned channels: %d removed, %d kept as zero rows",
             path, result.bytes / 1024, removed, kept)
    return result
