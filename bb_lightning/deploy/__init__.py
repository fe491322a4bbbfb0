"""Deployment: a fixed mixed-precision model as ONNX with integer weights (onnxruntime) or a smaller PyTorch model."""

from .build import to_deploy_model
from .export import ExportResult, export_onnx
from .session import ort_session

__all__ = ["ExportResult", "export_onnx", "ort_session", "to_deploy_model"]
