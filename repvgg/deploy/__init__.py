"""Deployment: verified export (ONNX, TorchScript, torch.export), INT8 quantization, pruning."""
from .export import FORMATS, ONNX_OPSETS, ExportCheckError, ExportReport, export_model

__all__ = ["FORMATS", "ONNX_OPSETS", "ExportCheckError", "ExportReport", "export_model"]
