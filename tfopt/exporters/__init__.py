"""Exporters, one per target, keyed by format name; each satisfies `base.Exporter`."""
from __future__ import annotations

import importlib.util
from dataclasses import replace

from tfopt.exporters import onnx, openvino, pb, saved_model, tflite
from tfopt.exporters.base import Exported, Exporter, ExportOptions
from tfopt.model import Model
from tfopt.passes import run_pipeline
from tfopt.results import PassReport

EXPORTERS: dict[str, Exporter] = {module.FORMAT: module
                                  for module in (onnx, tflite, pb, saved_model, openvino)}
PLUGIN_GROUP = "tfopt.exporters"  # entry points of installed packages: one target each


def _load_plugins() -> None:
    """Targets that installed packages declare (`[project.entry-points."tfopt.exporters"]`
    name = "module"), after tfopt's own; a built-in name is not replaced."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=PLUGIN_GROUP):
        if entry.name not in EXPORTERS:
            EXPORTERS[entry.name] = entry.load()


_load_plugins()


def missing_extra(fmt: str) -> str | None:
    """The message for a target whose optional library is not installed, else None."""
    needed = EXPORTERS[fmt].EXTRA
    if needed is None or importlib.util.find_spec(needed[0]) is not None:
        return None
    return f"--to {fmt} needs {needed[0]}, which is not installed: pip install 'tfopt[{needed[1]}]'"


def prepare(fmt: str, model: Model) -> tuple[Model, list[PassReport]]:
    """The frozen model as one target needs it: its exporter's PREPARE passes, whose reports
    name the target."""
    prepared, reports = run_pipeline(model, list(EXPORTERS[fmt].PREPARE))
    return prepared, [replace(r, target=fmt) for r in reports]


__all__ = ["EXPORTERS", "ExportOptions", "Exported", "Exporter", "missing_extra", "prepare"]
