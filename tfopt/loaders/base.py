"""What every loader returns, and the freezing of a TF2 ConcreteFunction that they share."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tfopt.categories import is_update_op
from tfopt.errors import InputError, first_line
from tfopt.graph import op_histogram, rename_node, unique_name
from tfopt.model import Model, TensorSpec


@dataclass
class LoadOptions:
    signature: str = "serving_default"
    tags: list[str] | None = None


@dataclass
class SourceInfo:
    path: str
    format: str
    signature: str
    nodes: int
    ops: dict[str, int]
    variables: int
    variable_bytes: int
    optimizer_variables: int = 0
    optimizer_variable_bytes: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Loaded:
    model: Model
    source: SourceInfo
    # runs the original model on one feed dict (signature names -> arrays)
    reference: Callable[[dict], dict]
    removed: Counter = field(default_factory=Counter)


def spec_from_tf(name: str, tf_spec) -> TensorSpec:
    shape = None if tf_spec.shape.rank is None else tuple(tf_spec.shape.as_list())
    return TensorSpec(name, tf_spec.dtype.as_numpy_dtype.__name__ if tf_spec.dtype.is_numpy_compatible
                      else tf_spec.dtype.name, shape)


def function_io_names(fn) -> tuple[list[str], list[str]]:
    """Signature names of a ConcreteFunction's flat inputs and outputs, in TF's flattening order."""
    import tensorflow as tf

    args, kwargs = fn.structured_input_signature
    inputs = [spec.name or f"input_{i}" for i, spec in enumerate(tf.nest.flatten(args))]
    inputs += sorted(kwargs)
    if isinstance(fn.structured_outputs, dict):
        outputs = sorted(fn.structured_outputs)
    else:
        outputs = [f"output_{i}" for i in range(len(tf.nest.flatten(fn.structured_outputs)))]
    return inputs, outputs


def freeze_function(fn, signature: str) -> Model:
    """Fold the variables of a ConcreteFunction into constants and name its IO by the signature."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    try:
        frozen = convert_variables_to_constants_v2(fn, lower_control_flow=False,
                                                   aggressive_inlining=True)
    except Exception as exc:  # TF raises ValueError, InvalidArgumentError and others
        _, ops = graph_stats(fn.graph.as_graph_def())
        updates = sorted(op for op in ops if is_update_op(op))
        if updates:
            raise InputError(f"signature '{signature}' updates variables ({', '.join(updates)}), "
                             "so it is a training step; pass an inference signature with "
                             "--signature") from exc
        raise InputError(f"cannot freeze signature '{signature}': {first_line(exc)}") from exc
    graph_def = frozen.graph.as_graph_def()
    in_names, out_names = function_io_names(fn)
    if len(in_names) != len(frozen.inputs):
        raise ValueError(f"signature has {len(in_names)} inputs, graph has {len(frozen.inputs)}")
    taken = {n.name for n in graph_def.node}
    renamed: dict[str, str] = {}

    def rename(old: str, new: str) -> None:
        rename_node(graph_def, old, new)
        renamed[old] = new
        taken.discard(old)
        taken.add(new)

    def current(name: str) -> str:
        while name in renamed:
            name = renamed[name]
        return name

    def free(name: str) -> None:
        # move an unrelated node out of the way of a signature name
        if name in taken:
            rename(name, unique_name(name, taken))

    inputs = []
    for name, tensor in zip(in_names, frozen.inputs):
        if current(tensor.op.name) != name:
            free(name)
            rename(current(tensor.op.name), name)
        inputs.append(spec_from_tf(name, tensor))
    outputs = []
    out_tensors = tf.nest.flatten(frozen.structured_outputs, expand_composites=True)
    for name, tensor in zip(out_names, out_tensors):
        free(name)
        node = graph_def.node.add()
        node.name, node.op = name, "Identity"
        node.input.append(f"{current(tensor.op.name)}:{tensor.value_index}")
        node.attr["T"].type = tensor.dtype.as_datatype_enum
        taken.add(name)
        outputs.append(spec_from_tf(name, tensor))
    return Model(graph_def, inputs, outputs, signature)


def call_signature(fn, feed: dict) -> dict[str, np.ndarray]:
    """Run a ConcreteFunction on a feed dict keyed by signature names."""
    import tensorflow as tf

    in_names, out_names = function_io_names(fn)
    args, kwargs = fn.structured_input_signature
    positional = [feed[n] for n in in_names[:len(tf.nest.flatten(args))]]
    named = {k: feed[k] for k in kwargs}
    result = fn(*positional, **named)
    flat = tf.nest.flatten(result)
    return {name: np.asarray(t) for name, t in zip(out_names, flat)}


def graph_stats(graph_def) -> tuple[int, dict[str, int]]:
    """Node count and op histogram of a graph, its function library included."""
    hist = Counter(op_histogram(graph_def))
    for fdef in graph_def.library.function:
        hist.update(n.op for n in fdef.node_def)
    return sum(hist.values()), dict(sorted(hist.items()))
