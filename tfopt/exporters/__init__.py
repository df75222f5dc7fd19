"""Exporters, one per target, keyed by format name.

Each module has FORMAT, FILENAME, export(model, path, options), describe(path, model) -> op
histogram, runner(path, model) -> a callable from a feed dict to the outputs, and
unsupported_ops(model, options) -> the graph's op types the target cannot express.
"""
from tfopt.exporters import onnx, pb, saved_model, tflite
from tfopt.exporters.base import Exported, ExportOptions

EXPORTERS = {module.FORMAT: module for module in (onnx, tflite, pb, saved_model)}

__all__ = ["EXPORTERS", "ExportOptions", "Exported"]
