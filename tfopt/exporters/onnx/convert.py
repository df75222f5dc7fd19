"""TF -> ONNX with tf2onnx: the opset, the ops tf2onnx cannot express, and the checked
conversion of the frozen graph."""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

from tfopt.errors import ConversionError, first_line
from tfopt.exporters.onnx.rewrites.registry import kernels_as_inputs
from tfopt.graph import const_value, hide_shapes, set_aside_kernels
from tfopt.model import Model

SIDECAR = "{name}.data"  # where external weights go, beside model.onnx (files.companion)
CATCH_ERRORS = "TF2ONNX_CATCH_ERRORS"  # tf2onnx.constants.ENV_TF2ONNX_CATCH_ERRORS
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


# LabelEncoder attribute names per numpy kind of the keys / values
_KEYS = {"U": "keys_strings", "S": "keys_strings", "O": "keys_strings", "i": "keys_int64s",
         "f": "keys_floats"}
_VALUES = {"U": "strings", "S": "strings", "O": "strings", "i": "int64s", "f": "floats"}


def label_encoders(proto: Any, graph_def: Any) -> Any:
    """tf2onnx leaves a frozen lookup table as raw HashTableV2 / LookupTableFindV2 nodes:
    each lookup becomes an ai.onnx.ml LabelEncoder holding the table's keys and values.

    Written here because tf2onnx converts tables only from its own SavedModel loader (its
    from_graph_def cannot take the table contents), and that ONNX fails the full checker.
    """
    import numpy as np
    import onnx
    from onnx import helper

    from tfopt.exporters.onnx.graph import OnnxGraph
    from tfopt.graph import table_contents

    finds = {n.name: n for n in graph_def.node if n.op == "LookupTableFindV2"}
    graph = OnnxGraph(proto)
    replaced, dropped = {}, set()
    for node in proto.graph.node:
        if node.op_type == "HashTableV2":
            dropped.add(id(node))
        if node.op_type != "LookupTableFindV2" or node.name not in finds:
            continue
        contents = table_contents(graph_def, finds[node.name])
        default = graph.constants.get(node.input[2])
        if contents is None or default is None:
            continue
        keys, values = (np.asarray(a).reshape(-1) for a in contents)
        text = values.dtype.kind in "USO"
        fill = default.reshape(-1)[0]
        attrs = {_KEYS[keys.dtype.kind]: [k.decode() if isinstance(k, bytes) else k
                                          for k in keys.tolist()],
                 f"values_{_VALUES[values.dtype.kind]}": [
                     v.decode() if isinstance(v, bytes) else v for v in values.tolist()],
                 "default_" + {"strings": "string", "int64s": "int64", "floats": "float"}[
                     _VALUES[values.dtype.kind]]: fill.decode() if text and
                 isinstance(fill, bytes) else fill.item() if hasattr(fill, "item") else fill}
        replaced[id(node)] = helper.make_node("LabelEncoder", [node.input[1]],
                                              list(node.output), name=node.name,
                                              domain="ai.onnx.ml", **attrs)
    if not replaced:
        return proto
    graph.replace(replaced, dropped)
    if not any(o.domain == "ai.onnx.ml" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("ai.onnx.ml", 2))
    # tf2onnx could not infer the shapes after a lookup; ONNX's inference knows LabelEncoder
    # (and crashes on ops it does not know, which the checker names after this)
    if not all(onnx.defs.has(n.op_type, n.domain or "") for n in proto.graph.node):
        return proto
    inferred = onnx.shape_inference.infer_shapes(proto)
    found = {v.name: v.type for v in list(inferred.graph.value_info)
             + list(inferred.graph.output) if v.type.tensor_type.HasField("shape")}
    for value in list(proto.graph.output) + list(proto.graph.value_info):
        if not value.type.tensor_type.HasField("shape") and value.name in found:
            value.type.CopyFrom(found[value.name])
    return proto


def attach_kernels(proto: Any, kernels: dict[str, Any]) -> Any:
    """The kernels (graph inputs of tf2onnx's model) as initializers; a Transpose or Reshape
    that tf2onnx put on one (its layout for Conv) is applied here, in numpy, as tf2onnx
    does to a constant kernel."""
    import numpy as np
    from onnx import numpy_helper

    from tfopt.exporters.onnx.graph import OnnxGraph

    if not kernels:
        return proto
    graph = OnnxGraph(proto)
    values = dict(kernels)
    dropped = set()
    for node in proto.graph.node:  # in order: a chain folds step by step
        if not node.input or node.input[0] not in values or node.output[0] in graph.outputs:
            continue
        value = values[node.input[0]]
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            result = np.ascontiguousarray(np.transpose(value, perm))
        elif node.op_type == "Reshape" and node.input[1] in graph.constants:
            shape = [d if d else value.shape[i]  # 0 copies the dimension (allowzero 0)
                     for i, d in enumerate(graph.constants[node.input[1]].tolist())]
            result = value.reshape(shape)
        elif node.op_type == "Identity":
            result = value
        else:
            continue
        values[node.output[0]] = result
        dropped.add(id(node))
    graph.replace({}, dropped)
    used = {name for node in proto.graph.node for name in node.input}
    _drop_inputs(proto, kernels)
    proto.graph.initializer.extend(numpy_helper.from_array(value, name)
                                   for name, value in values.items() if name in used)
    return proto


def _drop_inputs(proto: Any, names: Any) -> None:
    """Remove these graph inputs (weights tf2onnx saw as inputs, now initializers)."""
    kept = [i for i in proto.graph.input if i.name not in names]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)


def to_onnx(model: Model, opset: int) -> Any:
    """The frozen graph as a checked ONNX ModelProto; inputs and outputs keep the signature's
    names."""
    import onnx
    import tf2onnx
    from tensorflow.python.util import deprecation

    # tf2onnx copies every constant several times (5.7 GB for ResNet50's 0.1 GB): kernels
    # go in as graph inputs and come back as initializers; external weights stay inputs
    # until saved
    aside = set_aside_kernels(model.graph_def)
    graph_def, kernels = aside.graph_def, aside.kernels
    del aside
    weights = {f"{name}:0": name for name in list(model.weights) + list(kernels)}
    hide_shapes(graph_def, model.weights)  # in set_aside_kernels' copy
    convert = functools.partial(
        tf2onnx.convert.from_graph_def, graph_def, name=model.signature, opset=opset,
        input_names=[t.tensor for t in model.inputs] + list(weights),
        output_names=[t.tensor for t in model.outputs],
        tensors_to_rename={t.tensor: t.name for t in model.inputs + model.outputs} | weights)
    try:
        with deprecation.silence():  # tf2onnx calls TF1 APIs that log a warning each
            try:
                with _optimizer_errors_raised():
                    proto, _ = convert()
            except Exception:  # again as tf2onnx runs by default: an optimizer that
                proto, _ = convert()  # raises is skipped
    except Exception as exc:  # tf2onnx raises ValueError, KeyError and others
        raise ConversionError(f"tf2onnx failed: {first_line(exc)}") from exc
    del graph_def, convert
    proto = attach_kernels(proto, {name: const_value(node) for name, node in kernels.items()})
    proto = label_encoders(proto, model.graph_def)
    try:  # without its kernels (inputs of their type and shape there): the checker parses a
        # serialized copy, which with them was two more copies of the weights at once
        onnx.checker.check_model(kernels_as_inputs(proto)[0], full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        unknown = sorted({n.op_type for n in proto.graph.node
                          if not onnx.defs.has(n.op_type, n.domain or "")})
        hint = f"; ops with no ONNX equivalent: {', '.join(unknown)}" if unknown else ""
        raise ConversionError(f"tf2onnx wrote an invalid ONNX model{hint}: {first_line(exc)}",
                              details={"blocking_ops": unknown}) from exc
    return proto


@contextlib.contextmanager
def _optimizer_errors_raised() -> Iterator[None]:
    """tf2onnx deep-copies its graph before each of its optimizers, to go back if one
    raises: a third of its time on BERT-base. Its one switch is this variable (a user's
    own setting of it stands)."""
    if CATCH_ERRORS in os.environ:
        yield
        return
    os.environ[CATCH_ERRORS] = "FALSE"
    try:
        yield
    finally:
        os.environ.pop(CATCH_ERRORS, None)


def save(proto: Any, path: Any, weights: dict[str, Any]) -> None:
    """Write the model; external weights (graph inputs until now) become initializers whose
    bytes go to `<path>.data`, written once from numpy: onnx.save_model's external-data
    option would first copy each into the proto, and a proto cannot pass 2 GB."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from tfopt.files import companion

    data_path = companion(path, SIDECAR)
    if not weights:
        onnx.save(proto, str(path))
        return
    _drop_inputs(proto, weights)
    used = {name for node in proto.graph.node for name in node.input}
    offset = 0
    with open(data_path, "wb") as data:
        for name, value in weights.items():
            if name not in used:
                continue
            value = np.ascontiguousarray(value)
            tensor = TensorProto(name=name, dims=value.shape,
                                 data_type=helper.np_dtype_to_tensor_dtype(value.dtype))
            tensor.data_location = TensorProto.EXTERNAL
            data.write(value.data)
            for key, text in (("location", data_path.name), ("offset", str(offset)),
                              ("length", str(value.nbytes))):
                tensor.external_data.add(key=key, value=text)
            offset += value.nbytes
            proto.graph.initializer.append(tensor)
    onnx.save(proto, str(path))
