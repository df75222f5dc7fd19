"""Frozen, optimized GraphDef (`model.pb`), run back with a TF1 session."""
from __future__ import annotations

from pathlib import Path

from tfopt.errors import ConversionError
from tfopt.exporters.base import Exported, ExportOptions, Opened, python_callbacks
from tfopt.graph import PROTOBUF_LIMIT, node_name, op_histogram, plain_session
from tfopt.model import Model, TensorSpec
from tfopt.security import io_ops, refuse_io_ops

FORMAT = "pb"
FILENAME = "model.pb"
SUFFIX = ".pb"
COMPANIONS: tuple[str, ...] = ()
DEFAULT = True
EXTRA = None
PACKAGES = ()
MODES = frozenset({"none"})
PREPARE = ("unmark_fused_calls",)


def export(model: Model, path: Path, options: ExportOptions) -> Exported:
    size = model.graph_def.ByteSize() + model.weight_bytes
    if size > PROTOBUF_LIMIT:
        raise ConversionError(
            f"the frozen GraphDef would be {size / 2**30:.2f} GB; protobuf's limit is 2 GB, so "
            "no model.pb can hold these weights: use saved_model (they stay variables there), "
            "tflite or onnx", details={"too_large": True})
    path.write_bytes(model.inlined_graph().SerializeToString(deterministic=True))
    return Exported()


def check_options(options: ExportOptions) -> None:
    """Every value of the options this target reads is valid (options.validate checks them)."""


def unsupported_ops(model: Model, options: ExportOptions) -> list[str]:
    return python_callbacks(model)  # TensorFlow runs every other op it froze


def describe(path: Path, model: Model) -> dict[str, int]:
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    return op_histogram(graph_def)


def runner(path: Path, model: Model):
    return open_artifact(path, model.signature, allow_io_ops=True,
                         outputs=[t.name for t in model.outputs]).run  # tfopt's own


# nodes that end a graph without being a result of it
_NOT_OUTPUTS = frozenset({"NoOp", "Const", "Placeholder", "PlaceholderWithDefault", "Assert",
                          "SaveV2", "RestoreV2", "VarHandleOp"})


def open_artifact(path: Path, signature: str, allow_io_ops: bool = False,
                  outputs: list[str] | None = None) -> Opened:
    """A frozen GraphDef as it is (any producer): its Placeholders are the inputs, the
    nodes nothing reads (but no-ops and constants) the outputs, or those named, by node
    name."""
    import numpy as np
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    if not allow_io_ops:  # a stranger's graph runs here (tfopt's own was checked as a source)
        refuse_io_ops(io_ops(graph_def), False)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    session = plain_session(graph)

    def spec(node) -> TensorSpec:
        tensor = graph.get_tensor_by_name(f"{node.name}:0")
        dtype = "string" if tensor.dtype == tf.string else np.dtype(
            tensor.dtype.as_numpy_dtype).name
        shape = None if tensor.shape.rank is None else tuple(tensor.shape.as_list())
        return TensorSpec(node.name, dtype, shape)

    inputs = [spec(n) for n in graph_def.node if n.op == "Placeholder"]
    if outputs is None:
        read = {node_name(ref) for node in graph_def.node for ref in node.input}
        outputs = [n.name for n in graph_def.node
                   if n.name not in read and n.op not in _NOT_OUTPUTS]
    ends = [spec(n) for n in graph_def.node if n.name in outputs]
    fetches = {t.name: t.tensor for t in ends}

    def run(feed: dict) -> dict:
        return session.run(fetches, {f"{k}:0": v for k, v in feed.items()})
    return Opened(inputs, ends, run)


def trace(path: Path, feed: dict, signature: str | None = None) -> dict:
    """Every float tensor of the GraphDef, by TF tensor name (any producer)."""
    import tensorflow as tf

    from tfopt.graph import graph_tensors

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    return graph_tensors(graph_def, feed)


def read_precision(path: Path) -> str:
    return "fp32"  # TF graphs: tfopt writes no quantized .pb, and reads them as float
