"""TF -> ONNX with tf2onnx: the opset, the ops tf2onnx cannot express, and the checked
conversion of the frozen graph."""
from __future__ import annotations

import functools
from typing import Any

from tfopt.errors import ConversionError, first_line
from tfopt.model import Model

# handled by tf2onnx itself, not through an op handler
_STRUCTURAL = frozenset({"Placeholder", "PlaceholderWithDefault", "Const", "Identity", "NoOp",
                         "PartitionedCall", "StatefulPartitionedCall"})


@functools.cache
def default_opset() -> int:
    """The highest opset that tf2onnx, onnx and the installed onnxruntime all support."""
    import onnx
    import tf2onnx
    from onnx import helper

    from tfopt.exporters.onnx.runtime import session

    highest = min(max(tf2onnx.constants.OPSET_TO_IR_VERSION), onnx.defs.onnx_opset_version())
    for opset in range(highest, 7, -1):
        x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        probe.ir_version = tf2onnx.constants.OPSET_TO_IR_VERSION.get(opset, probe.ir_version)
        try:
            session(probe)
            return opset
        except Exception:  # onnxruntime refuses opsets it does not know
            continue
    raise RuntimeError("onnxruntime accepts no opset that tf2onnx can write")


def unsupported_ops(model: Model, opset: int) -> list[str]:
    """TF op types in the graph (function bodies included) that tf2onnx has no handler for
    at the opset."""
    import tf2onnx.onnx_opset  # noqa: F401  (registers the op handlers)
    from tf2onnx.handler import tf_op

    tf_op.create_mapping(opset, [])
    ops = {n.op for n in model.graph_def.node}
    ops |= {n.op for f in model.graph_def.library.function for n in f.node_def}
    return sorted(op for op in ops - _STRUCTURAL if tf_op.find_effective_op(op) is None)


def to_onnx(model: Model, opset: int) -> Any:
    """The frozen graph as a checked ONNX ModelProto; inputs and outputs keep the signature's
    names."""
    import onnx
    import tf2onnx
    from tensorflow.python.util import deprecation

    try:
        with deprecation.silence():  # tf2onnx calls TF1 APIs that log a warning each
            proto, _ = tf2onnx.convert.from_graph_def(
                model.graph_def, name=model.signature, opset=opset,
                input_names=[t.tensor for t in model.inputs],
                output_names=[t.tensor for t in model.outputs],
                tensors_to_rename={t.tensor: t.name for t in model.inputs + model.outputs})
    except Exception as exc:  # tf2onnx raises ValueError, KeyError and others
        raise ConversionError(f"tf2onnx failed: {first_line(exc)}") from exc
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        unknown = sorted({n.op_type for n in proto.graph.node
                          if not onnx.defs.has(n.op_type, n.domain or "")})
        hint = f"; ops with no ONNX equivalent: {', '.join(unknown)}" if unknown else ""
        raise ConversionError(f"tf2onnx wrote an invalid ONNX model{hint}: {first_line(exc)}",
                              details={"blocking_ops": unknown}) from exc
    return proto
