"""`ort_session`: open an exported file in onnxruntime with the options that keep its results faithful."""

from __future__ import annotations

import os
from typing import Any

#: onnxruntime's ``WeightBiasQuantization`` re-quantizes a float weight that follows a quantized input to int8
#: (and its bias to int32): it changed mobilenetv3_small_050 logits by up to 0.77. Disabled.
DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)


def ort_session(
    path: str | os.PathLike,
    threads: int | None = None,
    providers: list[str] | None = None,
    session_config: dict[str, str] | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``path`` (default CPU provider, all graph optimizations except the
    ones that change results: `DISABLED_OPTIMIZERS`).

    The int2 QLinearConv crash (onnxruntime fuses a Conv with an INT2 weight and a UINT8 input into an invalid
    QLinearConv) is avoided in the file itself: such inputs use an INT8 container (zero point -128), so a session with
    default options loads it too.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (``None``: onnxruntime's default).
        providers: execution providers (default ``["CPUExecutionProvider"]``).
        session_config: extra ``SessionOptions.add_session_config_entry`` pairs, e.g.
            ``{"session.disable_quant_qdq": "1"}``.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    for key, value in (session_config or {}).items():
        opts.add_session_config_entry(key, str(value))
    return ort.InferenceSession(
        str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )


def optimized_op_counts(path: str | os.PathLike, threads: int = 1) -> dict[str, int]:
    """Op types of onnxruntime's optimized graph of ``path`` (extended level, `DISABLED_OPTIMIZERS` off), e.g.
    ``{"QLinearConv": 5, "DequantizeLinear": 12, ...}``: which layers run on integer kernels."""
    import collections
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bb_ort_") as d:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(d) / "optimized.onnx")
        opts.intra_op_num_threads = threads
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(DISABLED_OPTIMIZERS))
        return dict(collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node))
