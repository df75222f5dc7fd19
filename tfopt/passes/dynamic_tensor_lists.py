"""Tensor lists whose element shape leaves the batch unknown get the batch at run time, so
the TFLite converter lowers them (it refuses a constant element shape holding -1, but takes
one computed in the graph) and the artifact keeps a dynamic batch.

    TensorListReserve|EmptyTensorList(Const [-1, d...], ...)
      -> TensorListReserve|EmptyTensorList(ConcatV2(batch, Const [d...]), ...)
    batch = StridedSlice(Shape(input), [0], [1])   (the first input of unknown batch)

Keras RNN layers build exactly these lists, one per layer, for the per-step outputs: the
leading -1 is the batch of the layer's input, which is the model's batch.
"""
from __future__ import annotations

import numpy as np

from tfopt.graph import const_node, const_value, node_name, unique_name
from tfopt.passes.base import PassContext, PassLog, register
from tfopt.passes.pattern import (
    CONST,
    GraphView,
    OpTypePattern,
    Replacement,
    Skip,
    replace_matching,
)

PATTERN = OpTypePattern("TensorListReserve|EmptyTensorList", [CONST], name="list")


def _batch_input(graph_def, inputs: tuple[str, ...]) -> str | None:
    """The first signature input of known rank whose leading (batch) dimension is unknown."""
    placeholders = {n.name: n for n in graph_def.node if n.op == "Placeholder"}
    for name in inputs:
        node = placeholders.get(name)
        shape = node.attr["shape"].shape if node is not None else None
        if shape is not None and not shape.unknown_rank and shape.dim and shape.dim[0].size < 0:
            return name
    return None


def _batch_nodes(source_node, dtype, taken: set[str]) -> list:
    """Shape(source)[0:1]: three constants, a Shape and a StridedSlice (the last node)."""
    import tensorflow as tf

    nodes = []
    int_type = tf.as_dtype(dtype).as_datatype_enum
    source = source_node.name

    def node(op: str, name: str, inputs: list[str]):
        made = type(source_node)(name=unique_name(name, taken), op=op, input=inputs)
        taken.add(made.name)
        nodes.append(made)
        return made

    def const(name: str, value: list[int]):
        made = const_node(unique_name(name, taken), np.array(value, dtype))
        taken.add(made.name)
        nodes.append(made)
        return made.name

    shape_node = node("Shape", f"{source}/tfopt_batch/shape", [source])
    shape_node.attr["T"].CopyFrom(source_node.attr["dtype"])
    shape_node.attr["out_type"].type = int_type
    bounds = [const(f"{source}/tfopt_batch/{k}", [v]) for k, v in
              (("begin", 0), ("end", 1), ("stride", 1))]
    batch = node("StridedSlice", f"{source}/tfopt_batch", [shape_node.name, *bounds])
    batch.attr["T"].type = batch.attr["Index"].type = int_type
    for mask in ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask",
                 "shrink_axis_mask"):
        batch.attr[mask].i = 0
    return nodes


@register("dynamic_tensor_lists")
def dynamic_tensor_lists(graph_def, ctx: PassContext, log: PassLog):
    import tensorflow as tf

    if not any(n.op in ("TensorListReserve", "EmptyTensorList") for n in graph_def.node):
        return graph_def
    source = _batch_input(graph_def, ctx.inputs)
    added: dict[np.dtype, str] = {}  # the batch tensor, once per index dtype

    def rewrite(found: dict, view: GraphView) -> Replacement | Skip:
        listed = found["list"]
        shape = const_value(view.nodes[node_name(listed.input[0])]).astype(np.int64)
        if shape.ndim != 1 or shape.size == 0:
            return Skip(f"element shape {shape.tolist()} has no batch dimension")
        if shape[0] >= 0:
            return Skip(f"element shape {shape.tolist()} is static already")
        if (shape[1:] < 0).any():
            return Skip(f"element shape {shape.tolist()} has unknown dimensions beyond the "
                        "batch")
        if source is None:
            return Skip("no input has an unknown batch dimension to take it from")
        dtype = np.dtype(tf.as_dtype(listed.attr["shape_type"].type).as_numpy_dtype)
        taken = set(view.nodes)
        nodes = []
        if dtype not in added:
            nodes = _batch_nodes(view.nodes[source], dtype, taken)
            added[dtype] = nodes[-1].name
        rest = const_node(unique_name(f"{listed.name}/element_dims", taken),
                          shape[1:].astype(dtype))
        taken.add(rest.name)
        axis = const_node(unique_name(f"{listed.name}/element_axis", taken), np.int32(0))
        taken.add(axis.name)
        concat = type(listed)(name=unique_name(f"{listed.name}/element_shape", taken),
                              op="ConcatV2", input=[added[dtype], rest.name, axis.name])
        concat.attr["T"].CopyFrom(listed.attr["shape_type"])
        concat.attr["N"].i = 2
        concat.attr["Tidx"].CopyFrom(axis.attr["dtype"])
        new = type(listed)()
        new.CopyFrom(listed)
        new.input[0] = concat.name
        return Replacement(nodes=[*nodes, rest, axis, concat, new], details={
            "node": listed.name, "element_shape": shape.tolist(), "batch_from": source})

    return replace_matching(graph_def, [PATTERN], rewrite, log, keep=ctx.inputs + ctx.outputs,
                            action="rewritten", removed=None)
