"""Inference-only SavedModel (`saved_model/`): the frozen graph, its large float constants as
variables (no optimizer state, no training ops), the same signature."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tfopt import compat
from tfopt.exporters.base import (
    Exported,
    ExportOptions,
    Opened,
    pick_signature,
    python_callbacks,
    save_inference_model,
)
from tfopt.model import Model, TensorSpec
from tfopt.security import io_ops, refuse_io_ops

FORMAT = "saved_model"
FILENAME = "saved_model"
SUFFIX = "saved_model.pb"  # a directory holding it
COMPANIONS: tuple[str, ...] = ()
DEFAULT = True
EXTRA = None
PACKAGES = ()
MODES = frozenset({"none"})
PREPARE = ("unmark_fused_calls",)


def export(model: Model, path: Path, options: ExportOptions) -> Exported:
    save_inference_model(model, path)
    _deterministic_fingerprint(path)
    return Exported()


def _deterministic_fingerprint(path: Path) -> None:
    """TF writes a random uuid into fingerprint.pb on every save; derive it from the saved
    graph instead, so that the same model gives the same bytes (its hashes stay TF's)."""
    import hashlib

    from tensorflow.core.protobuf import fingerprint_pb2

    file = path / "fingerprint.pb"
    if not file.is_file() or not compat.fingerprint_has_uuid():
        return
    fingerprint = fingerprint_pb2.FingerprintDef()
    fingerprint.ParseFromString(file.read_bytes())
    digest = hashlib.sha256((path / "saved_model.pb").read_bytes()).hexdigest()
    fingerprint.uuid = str(int(digest[:30], 16))
    file.write_bytes(fingerprint.SerializeToString(deterministic=True))


def check_options(options: ExportOptions) -> None:
    """Every value of the options this target reads is valid (options.validate checks them)."""


def unsupported_ops(model: Model, options: ExportOptions) -> list[str]:
    return python_callbacks(model)  # TensorFlow runs every other op it froze


def describe(path: Path, model: Model) -> dict[str, int]:
    """Ops the signature runs; the saver plumbing every SavedModel carries is left out."""
    from collections import Counter

    from tfopt.saved_models import read_proto, split_by_signature

    inside, _ = split_by_signature(read_proto(path).meta_graphs[0], model.signature)
    return dict(sorted(Counter(n.op for n in inside).items()))


def runner(path: Path, model: Model):
    return open_artifact(path, model.signature, allow_io_ops=True).run  # tfopt's own


def open_artifact(path: Path, signature: str, allow_io_ops: bool = False) -> Opened:
    """A SavedModel as it is (any producer), through the signature of that name, or its
    only one; its graph is checked for side-effect ops before anything runs."""
    import tensorflow as tf

    from tfopt.saved_models import read_proto, split_by_signature

    if not allow_io_ops:  # a stranger's graph runs here (tfopt's own was checked as a source)
        meta = read_proto(path).meta_graphs[0]
        signature = pick_signature(path, [k for k in meta.signature_def
                                          if not k.startswith("__")], signature)
        runs = tf.compat.v1.GraphDef()  # what the signature runs (the saver is not run)
        runs.node.extend(split_by_signature(meta, signature)[0])
        refuse_io_ops(io_ops(runs, path), False)
    signatures = tf.saved_model.load(str(path)).signatures
    signature = pick_signature(path, list(signatures), signature)
    fn = signatures[signature]

    def spec(name: str, tensor) -> TensorSpec:
        dtype = "string" if tensor.dtype == tf.string else np.dtype(
            tensor.dtype.as_numpy_dtype).name
        shape = None if tensor.shape.rank is None else tuple(tensor.shape.as_list())
        return TensorSpec(name, dtype, shape)

    def run(feed: dict) -> dict:
        return {k: np.asarray(v) for k, v in fn(**feed).items()}
    return Opened([spec(k, t) for k, t in sorted(fn.structured_input_signature[1].items())],
                  [spec(k, t) for k, t in sorted(fn.structured_outputs.items())], run,
                  signature=signature)


def trace(path: Path, feed: dict, signature: str | None = None) -> dict:
    from tfopt.errors import TraceUnavailable

    raise TraceUnavailable("a SavedModel's intermediate tensors live inside its functions, "
                           "which TF does not let a caller read; trace the .pb, which holds "
                           "the same graph")


def read_precision(path: Path) -> str:
    return "fp32"  # TF graphs: tfopt writes no quantized SavedModel, and reads them as float
