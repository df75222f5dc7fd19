"""The TF2 freeze core: variables folded from numpy, and external weights.

convert_variables_to_constants_v2 copies every weight about seven times on its way into a
GraphDef, and a GraphDef cannot pass protobuf's 2 GB. Here TF inlines the function with its
variables left as resource captures; then each variable that is only read becomes a
Placeholder named after it, with its value a view of the variable's buffer:

    Placeholder(resource) -> [Identity ->] ReadVariableOp          -> Placeholder -> Identity
    Placeholder(resource) -> [Identity ->] ResourceGather(indices) -> Placeholder -> GatherV2

Those under `large_weight_bytes` become Consts (one copy); the rest stay external weights
in `Model.weights`, which exporters write as variables (SavedModel, TFLite via its
converter), as ONNX external data, or inline into `model.pb` while it fits.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from tfopt.categories import writes_variable
from tfopt.graph import (
    DT_INT32,
    DT_RESOURCE,
    add_const,
    const_node,
    consumers,
    forwarded_reads,
    fused_functions,
    inline_constants,
    rename_nodes,
    unique_name,
)

LARGE_WEIGHT_BYTES = 256 << 20
SIMPLE_READS = frozenset({"ReadVariableOp", "ResourceGather"})


def load_saved_model(path: str, tags: list[str], signature: str, prefix: str | None
                     ) -> tuple[Any, Any]:
    """(loaded object, signature function), restoring only the variables the signature
    captures, one at a time, from the checkpoint: TF's load restores every trackable, and
    a Keras `model.export` holds each weight twice (as `variables` and `_all_variables`)."""
    import tensorflow as tf

    if prefix is not None:
        skip = tf.saved_model.LoadOptions(experimental_skip_checkpoint=True)
        obj = tf.saved_model.load(path, tags=tags, options=skip)
        fn = obj.signatures[signature]
        keys = _checkpoint_keys(obj, list(fn.graph.variables))
        if keys is not None:
            for variable, key in keys:
                (value,) = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[key],
                                                shape_and_slices=[""], dtypes=[variable.dtype])
                variable.assign(value)
                del value  # one copy of each weight at a time, not the checkpoint's all
            return obj, fn
    obj = tf.saved_model.load(path, tags=tags)  # a variable outside the object graph
    return obj, obj.signatures[signature]


def _checkpoint_keys(root: Any, variables: list) -> list[tuple[Any, str]] | None:
    """Each variable's key in the object-based checkpoint (its first path from the root), or
    None when one is not reachable."""
    import tensorflow as tf

    wanted = {id(v): v for v in variables}
    found: dict[int, str] = {}
    view = tf.train.TrackableView(root)
    queue, seen = deque([("", root)]), {id(root)}
    while queue and len(found) < len(wanted):
        path, node = queue.popleft()
        if id(node) in wanted:
            found.setdefault(id(node), path)
        for name, child in view.children(node).items():
            if id(child) not in seen:
                seen.add(id(child))
                queue.append((f"{path}/{name}" if path else name, child))
    if len(found) < len(wanted):
        return None
    return [(wanted[i], f"{found[i]}/.ATTRIBUTES/VARIABLE_VALUE") for i in wanted]


def captured_variables(fn: Any) -> dict[str, Any]:
    """The function's captured variables of known shape, by capture placeholder."""
    by_handle = {id(v.handle): v for v in fn.graph.variables}
    found = {}
    for outer, inner in fn.graph.captures:
        variable = by_handle.get(id(outer))
        if variable is not None and variable.shape.is_fully_defined():
            found[inner.op.name] = variable
    return found


IDENTITY = frozenset({"Identity"})  # what a captured handle passes through when inlined


Rewrite = Callable[[Any, Any], Any]  # (inlined graph_def, frozen function) -> graph_def


def freeze(fn: Any, large_bytes: int, rewrite: Rewrite | None = None
           ) -> tuple[Any, Any, dict[str, np.ndarray], dict[str, Any]]:
    """Fold a ConcreteFunction's variables without TensorFlow copying them: every variable
    that is only read (ReadVariableOp, ResourceGather) stays a capture while TF inlines the
    function, then becomes a Placeholder; those under large_bytes become Consts from a
    view of the variable (one copy, where convert_variables_to_constants_v2 makes about
    seven), the rest external weights. Variables read inside control flow (a While body)
    are folded by TF as before. `rewrite` runs on the inlined graph while every variable is
    still a capture: a variable it leaves unread (an augmentation layer's seed) is dropped.
    A variable the function writes raises WrittenVariable.

    Returns (frozen function, its graph_def, external weights, their variables).
    """
    variables = captured_variables(fn)
    frozen, graph_def = _inlined(fn, set(variables), rewrite)
    present = {n.name for n in graph_def.node}
    unread = {h for h in variables if h not in present}
    variables = {h: v for h, v in variables.items() if h in present}
    readers = consumers(graph_def)
    reader_nodes = {h: forwarded_reads(readers, h, IDENTITY)[1] for h in variables}
    for handle, nodes in reader_nodes.items():
        writer = next((r for r in nodes if writes_variable(r.op)), None)
        if writer is not None:
            raise WrittenVariable(variables[handle].name.split(":")[0], writer.op, writer.name)
    simple = {h: v for h, v in variables.items()
              if {r.op for r in reader_nodes[h]} <= SIMPLE_READS}
    if len(simple) != len(variables):  # let TF fold the others, captured in control flow
        frozen, graph_def = _inlined(fn, set(simple) | unread, rewrite)
        readers = consumers(graph_def)
    read_values_in_functions(graph_def)
    values, live = externalize(graph_def, readers, simple)
    small = {name: value for name, value in values.items() if value.nbytes < large_bytes}
    inline_constants(graph_def, small)
    weights = {name: value for name, value in values.items() if name not in small}
    return frozen, graph_def, weights, {name: live[name] for name in weights}


class WrittenVariable(Exception):
    """The function writes a variable (an optimizer step, a counter): it is no inference."""

    def __init__(self, variable: str, op: str, node: str):
        super().__init__(f"{op} '{node}' writes variable '{variable}'")
        self.variable, self.op, self.node = variable, op, node


def _inlined(fn: Any, kept: set[str], rewrite: Rewrite | None) -> tuple[Any, Any]:
    frozen = freeze_keeping(fn, kept)
    graph_def = frozen.graph.as_graph_def()
    return frozen, (graph_def if rewrite is None else rewrite(graph_def, frozen))


def freeze_keeping(fn: Any, kept: set[str]) -> Any:
    """convert_variables_to_constants_v2 with some variables left as captures: the public
    function has no denylist, the converter class it wraps does. A function that the TFLite
    converter fuses into one builtin (FUSED_FUNCTIONS) stays a call: c2c inlines it."""
    from tensorflow.python.framework import convert_to_constants as c2c

    fused = fused_functions(fn.graph.as_graph_def().library)
    if fused:
        data = c2c._FunctionConverterDataInEager.__new__(c2c._FunctionConverterDataInEager)
        data._func = fn
        c2c._ConverterData.__init__(data, _inlined_keeping(fn, fused),
                                    variable_names_denylist=kept)
        data._build_tensor_data()
    else:
        data = c2c._FunctionConverterDataInEager(func=fn, lower_control_flow=False,
                                                  aggressive_inlining=True,
                                                  variable_names_denylist=kept)
    graph_def, converted = c2c._replace_variables_by_constants(converter_data=data)
    return c2c._construct_concrete_function(fn, graph_def, converted)


def _inlined_keeping(fn: Any, fused: set[str]) -> Any:
    """c2c's inlining (_run_inline_graph_optimization) keeping the calls of fused functions
    whole: Grappler's aggressive mode ignores `_noinline`, and specializes a kept call to its
    constant arguments (the converter then no longer recognizes the signature), but does
    neither to a call marked `_XlaMustCompile`. The mark stays through tfopt's passes; each
    exporter's preparation removes it (unmark_fused_calls), or inlines the body
    (inline_xla_calls)."""
    from tensorflow.python.framework import convert_to_constants as c2c

    from tfopt.passes.grappler import optimize

    graph_def = c2c.disable_lower_using_switch_merge(fn.graph.as_graph_def())
    for function in graph_def.library.function:
        function.attr.pop("api_implements", None)  # as c2c does: only a device choice
        if function.signature.name in fused:
            function.attr["_noinline"].b = True
    for node in _fused_calls(graph_def, fused):
        node.attr["_XlaMustCompile"].b = True
    return optimize(graph_def, [t.name for t in fn.inputs + fn.outputs], ["function"],
                    aggressive=True)


def _fused_calls(graph_def: Any, fused: set[str]) -> list:
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return [n for n in nodes if "f" in n.attr and n.attr["f"].func.name in fused]


VALUE_READS = frozenset({"ReadVariableOp", "ResourceGather", "ResourceGatherNd"})


def read_value(read: Any, dtype: int, add_axis: Callable[[str, np.int32], str]) -> None:
    """Rewrite in place a read of a variable's handle into the same read of its value:
    ReadVariableOp -> Identity, ResourceGather(handle, indices) -> GatherV2(params,
    indices, axis), ResourceGatherNd -> GatherNd. add_axis(name, value) adds a Const for
    GatherV2's axis where the read lives and returns the input that names it."""
    indices = read.attr["Tindices"].type
    batch_dims = read.attr["batch_dims"].i
    op = read.op
    read.attr.clear()
    if op == "ReadVariableOp":
        read.op = "Identity"
        read.attr["T"].type = dtype
        return
    read.attr["Tparams"].type = dtype
    read.attr["Tindices"].type = indices
    if op == "ResourceGatherNd":
        read.op = "GatherNd"
        return
    read.op = "GatherV2"
    read.input.insert(2, add_axis(f"{read.name}/axis", np.int32(batch_dims)))
    read.attr["Taxis"].type = DT_INT32
    read.attr["batch_dims"].i = batch_dims


def read_values_in_functions(graph_def: Any) -> int:
    """TF's freezing turns a variable that a function captures (a While body's embedding)
    into a value argument, but rewrites only the ReadVariableOps of it: a ResourceGather
    kept reading a float is what Grappler then refused. Rewrite every read of an argument
    that is no longer a resource; returns how many."""
    count = 0
    for function in graph_def.library.function:
        values = {arg.name: arg.type for arg in function.signature.input_arg
                  if arg.type != DT_RESOURCE}
        reads = [n for n in function.node_def
                 if n.op in VALUE_READS and n.input and n.input[0] in values]
        add_axis = _const_adder(function)
        for read in reads:
            read_value(read, values[read.input[0]], add_axis)
        count += len(reads)
    return count


def _const_adder(function: Any) -> Callable[[str, np.int32], str]:
    """add(name, value): a Const in a FunctionDef, named uniquely; returns its output."""
    taken = {n.name for n in function.node_def}

    def add(name: str, value: np.int32) -> str:
        node = function.node_def.add()
        node.CopyFrom(const_node(unique_name(name, taken), value))
        taken.add(node.name)
        return f"{node.name}:output:0"
    return add


def externalize(graph_def: Any, readers: dict[str, list], handles: dict[str, Any]
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Turn each kept variable's handle Placeholder (in place) into a float Placeholder named
    after the variable (readers: the graph's consumers()); returns the values (views of the
    variables' buffers) and the variables themselves by new name."""
    nodes = {n.name: n for n in graph_def.node}
    taken = set(nodes)
    values, variables = {}, {}
    renames: dict[str, str] = {}

    def add_axis(name: str, value: np.int32) -> str:
        axis = add_const(graph_def, unique_name(name, taken), value)
        taken.add(axis.name)
        return axis.name

    for handle, variable in handles.items():
        node = nodes.get(handle)
        if node is None:
            continue
        dtype = variable.dtype.as_datatype_enum
        forwarders, reads = forwarded_reads(readers, node.name, IDENTITY)
        for forwarder in forwarders:  # they forward the value now, not the handle
            forwarder.attr["T"].type = dtype
        for read in reads:
            read_value(read, dtype, add_axis)
        name = unique_name(variable.name.split(":")[0], taken - {node.name})
        node.attr.clear()
        node.attr["dtype"].type = dtype
        node.attr["shape"].shape.CopyFrom(variable.shape.as_proto())
        if name != node.name:
            taken.discard(node.name)
            renames[node.name] = name
        taken.add(name)
        values[name] = np.asarray(variable.value())  # a view of TF's buffer, not a copy
        variables[name] = variable
    rename_nodes(graph_def, renames)
    return values, variables
