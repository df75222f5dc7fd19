"""Frozen, optimized GraphDef (`model.pb`), run back with a TF1 session."""
from __future__ import annotations

from pathlib import Path

from tfopt.errors import ConversionError
from tfopt.exporters.base import Exported, ExportOptions, python_callbacks
from tfopt.graph import op_histogram, plain_session
from tfopt.loaders import weights as external
from tfopt.model import Model

FORMAT = "pb"
FILENAME = "model.pb"
MODES = frozenset({"none"})
PREPARE: tuple[str, ...] = ()


def export(model: Model, path: Path, options: ExportOptions) -> Exported:
    size = model.graph_def.ByteSize() + model.weight_bytes
    if size > external.PROTOBUF_LIMIT:
        raise ConversionError(
            f"the frozen GraphDef would be {size / 2**30:.2f} GB; protobuf's limit is 2 GB, so "
            "no model.pb can hold these weights: use saved_model (they stay variables there), "
            "tflite or onnx", details={"too_large": True})
    path.write_bytes(model.inlined_graph().SerializeToString(deterministic=True))
    return Exported()


def unsupported_ops(model: Model, options: ExportOptions) -> list[str]:
    return python_callbacks(model)  # TensorFlow runs every other op it froze


def describe(path: Path, model: Model) -> dict[str, int]:
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    return op_histogram(graph_def)


def runner(path: Path, model: Model):
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    session = plain_session(graph)
    fetches = {t.name: t.tensor for t in model.outputs}

    def run(feed: dict) -> dict:
        return session.run(fetches, {f"{k}:0": v for k, v in feed.items()})
    return run
