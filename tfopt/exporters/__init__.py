"""Exporters, one per target, keyed by format name.

Each module has FORMAT, FILENAME, export(model, path, options), describe(path, model) -> op
histogram, and runner(path, model) -> a callable from a feed dict to the outputs.
"""
from tfopt.exporters import onnx, pb, saved_model, tflite
from tfopt.exporters.base import Exported, ExportOptions

EXPORTERS = {module.FORMAT: module for module in (onnx, tflite, pb, saved_model)}

__all__ = ["EXPORTERS", "ExportOptions", "Exported"]
