"""Deployment: a fixed mixed-precision model as ONNX with integer weights (onnxruntime) or a smaller PyTorch model."""

from ._api import register_hook
from .build import to_deploy_model
from .cli import main as _export_command
from .export import ExportResult, export_onnx
from .hooks import write_onnx_new as _write_onnx_new
from .hooks import write_onnx_next_to as _write_onnx_next_to
from .session import ort_session

# what the callbacks' `export_onnx` option and `bb-lightning export` call (they may not import this package)
register_hook("onnx_writer", _write_onnx_next_to)
register_hook("onnx_writer_new", _write_onnx_new)
register_hook("export_command", _export_command)

__all__ = ["ExportResult", "export_onnx", "ort_session", "to_deploy_model"]
