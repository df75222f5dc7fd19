"""Loaders, one per input format, keyed by format name. Each returns a `Loaded`."""
from __future__ import annotations

from pathlib import Path

from tfopt.errors import InputError
from tfopt.loaders import checkpoint, graph_def, keras_file, saved_model, saved_model_v1
from tfopt.loaders.base import Loaded, Loader, LoadOptions

LOADERS: dict[str, Loader] = {
    module.FORMAT: module
    for module in (saved_model, saved_model_v1, keras_file, checkpoint, graph_def)}

KINDS = "a SavedModel directory, a .keras/.h5 file, a checkpoint's .meta or a .pb/.pbtxt graph"

__all__ = ["LOADERS", "LoadOptions", "Loaded", "Loader", "check_exists",
           "detect_format", "load"]


def check_exists(path: Path) -> None:
    """The checks of detect_format that read no file (and so import no TensorFlow)."""
    if path.is_symlink() and not path.exists():
        raise InputError(f"{path} is a symlink that leads nowhere (missing target or a loop); "
                         f"pass {KINDS}")
    if not path.exists() and not checkpoint.sniff(path):  # a checkpoint may be named by prefix
        raise InputError(f"{path} does not exist; pass {KINDS}")


def detect_format(path: Path) -> str:
    check_exists(path)
    for name, module in LOADERS.items():
        if module.sniff(path):
            return name
    if path.is_dir():
        raise InputError(f"{path} is a directory but not a SavedModel (no saved_model.pb); "
                         "point at the SavedModel directory itself")
    raise InputError(f"{path} is not a model tfopt reads; pass {KINDS}")


def load(path: Path, options: LoadOptions) -> Loaded:
    return LOADERS[detect_format(path)].load(path, options)
