"""Small helpers over tf.compat.v1.GraphDef: name parsing, consumer maps and rewiring.

Everything here is linear in the graph size; passes build on it. The last helpers run a
graph (every float tensor, for traces) and keep the garbage collector off TF's objects.
"""
from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


def node_name(ref: str) -> str:
    """'^a' -> 'a', 'a:1' -> 'a', 'a' -> 'a'."""
    ref = ref[1:] if ref.startswith("^") else ref
    head, sep, port = ref.rpartition(":")
    return head if sep and port.isdigit() else ref


def tensor_name(ref: str) -> str:
    """'a' -> 'a:0', 'a:1' -> 'a:1'."""
    _, sep, port = ref.rpartition(":")
    return ref if sep and port.isdigit() else f"{ref}:0"


def is_control(ref: str) -> bool:
    return ref.startswith("^")


def op_histogram(graph_def) -> dict[str, int]:
    return dict(sorted(Counter(n.op for n in graph_def.node).items()))


def consumers(graph_def) -> dict[str, list]:
    """node name -> the NodeDefs that read it (data or control)."""
    out = defaultdict(list)
    for node in graph_def.node:
        for ref in node.input:
            out[node_name(ref)].append(node)
    return out


def reachable(graph_def, roots: Iterable[str]) -> set[str]:
    """Names of the nodes that the given nodes depend on, themselves included."""
    by_name = {n.name: n for n in graph_def.node}
    seen, stack = set(), [r for r in roots if r in by_name]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for source in map(node_name, by_name[name].input):
            if source in by_name and source not in seen:
                stack.append(source)
    return seen


def called_functions(node, library: Container[str]) -> list[str]:
    """Library functions a node calls: its op (a direct call) and its function attributes."""
    called = [node.op] if node.op in library else []
    for attr in node.attr.values():
        if attr.HasField("func"):
            called.append(attr.func.name)
        called.extend(f.name for f in attr.list.func)
    return [name for name in called if name in library]


def inlined_size(graph_def, nodes: Iterable | None = None) -> tuple[int, int]:
    """(nodes once every function call is expanded in place, deepest call nesting) of the
    given top-level nodes (default all). A recursive library has depth -1. Iterative: the
    library may be hostile (10,000 levels, or each level calling the next twice)."""
    functions = {f.signature.name: f for f in graph_def.library.function}
    calls = {name: [c for n in f.node_def for c in called_functions(n, functions)]
             for name, f in functions.items()}
    size: dict[str, int] = {}
    depth: dict[str, int] = {}
    for root in functions:
        stack, open_ = [root], set()
        while stack:
            name = stack[-1]
            if name in size:
                stack.pop()
                continue
            waiting = [c for c in calls[name] if c not in size]
            if name not in open_:
                open_.add(name)
                if any(c in open_ for c in waiting):
                    return len(graph_def.node), -1  # a function that calls itself
                stack.extend(waiting)
                continue
            stack.pop()
            size[name] = len(functions[name].node_def) + sum(size[c] for c in calls[name])
            depth[name] = 1 + max((depth[c] for c in calls[name]), default=0)
    top = list(graph_def.node) if nodes is None else list(nodes)
    called = [c for n in top for c in called_functions(n, functions)]
    return (len(top) + sum(size[c] for c in called),
            max((depth[c] for c in called), default=0))


# ops whose output 0 is their input 0, unchanged
FORWARDING_OPS = frozenset({"Identity", "RefIdentity", "Snapshot", "StopGradient",
                            "PreventGradient"})


DT_FLOAT, DT_INT32, DT_STRING, DT_INT64, DT_RESOURCE = 1, 3, 7, 9, 20  # DataType enums
DT_BFLOAT16, DT_HALF = 14, 19
PROTOBUF_LIMIT = (2 << 30) - 1  # bytes: a serialized message larger than this cannot be read
FLOAT_TYPES = frozenset({1, 2, 14, 19})  # DataType enums: float32, float64, bfloat16, float16
# ops whose precision is the model's compute precision (Keras' mixed policies lower them)
COMPUTE_OPS = frozenset({"Conv2D", "Conv3D", "DepthwiseConv2dNative", "MatMul", "BatchMatMul",
                         "BatchMatMulV2", "BatchMatMulV3", "Einsum", "Conv2DBackpropInput",
                         "Conv3DBackpropInputV2", "_FusedConv2D", "_FusedMatMul"})


def compute_precision(graph_def) -> str:
    """The precision a graph's convolutions and matmuls compute in, its functions included:
    "float32", or "float16"/"bfloat16" (the lowest) under a Keras mixed-precision policy."""
    found = set()
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    for node in nodes:
        if node.op in COMPUTE_OPS and "T" in node.attr:
            found.add(node.attr["T"].type)
    return "float16" if DT_HALF in found else "bfloat16" if DT_BFLOAT16 in found else \
        "float32"
# quantization-aware training's ops: the ranges they hold quantize the model without
# calibration, and the rounding they do is the original's resolution
FAKE_QUANT_OPS = frozenset({"FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel",
                            "FakeQuantWithMinMaxArgs"})
# ops whose output holds values of their input: a fake-quant grid survives them
GRID_KEEPING_OPS = FORWARDING_OPS | {"Reshape", "Squeeze", "ExpandDims", "Transpose", "MaxPool",
                                     "ConcatV2", "Pack", "StridedSlice", "Slice", "GatherV2"}


def fake_quant_nodes(graph_def) -> list:
    return [n for n in graph_def.node if n.op in FAKE_QUANT_OPS]


def fake_quant_steps(graph_def, outputs: Iterable[str]) -> dict[str, float]:
    """For each output whose values lie on a fake quant's grid (through ops that only move
    values), that grid's step (the largest over channels): the original's resolution."""
    nodes = {n.name: n for n in graph_def.node}
    steps = {}
    for output in outputs:
        node = nodes.get(output)
        while node is not None and node.op in GRID_KEEPING_OPS and node.input:
            node = nodes.get(node_name(node.input[0]))
        if node is None or node.op not in FAKE_QUANT_OPS:
            continue
        step = _grid_step(node, nodes)
        if step:
            steps[output] = step
    return steps


def _grid_step(node, nodes: dict) -> float | None:
    given = fake_quant_range(node, nodes)
    if isinstance(given, str):
        return None
    num_bits, narrow = fake_quant_attrs(node)
    low, high = (np.asarray(v, np.float64) for v in given)
    return float(np.max(high - low)) / (2 ** num_bits - 1 - int(narrow))


def fake_quant_range(node, nodes: dict) -> tuple[np.ndarray, np.ndarray] | str:
    """A fake-quant node's (min, max) as given, or why it cannot be read."""
    if node.op == "FakeQuantWithMinMaxArgs":
        return np.array(node.attr["min"].f, np.float32), np.array(node.attr["max"].f, np.float32)
    bounds = [nodes.get(node_name(ref)) for ref in node.input[1:3]]
    if any(b is None or b.op != "Const" for b in bounds):
        return "its min or max is computed, not a constant"
    return const_value(bounds[0]), const_value(bounds[1])


def fake_quant_attrs(node) -> tuple[int, bool]:
    """(num_bits, narrow_range) of a fake-quant node."""
    num_bits = node.attr["num_bits"].i if "num_bits" in node.attr else 8
    return num_bits, bool(node.attr["narrow_range"].b)


# a v1 while loop's back edge: its output feeds a Merge earlier in the loop
BACK_EDGE_OPS = frozenset({"NextIteration", "RefNextIteration"})
NORM_OPS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})


@functools.cache
def is_stateful(op: str) -> bool:
    """Whether an op is stateful (random, variables, I/O); unregistered ops, function
    calls among them, count as stateful."""
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(op)
    return op_def is None or op_def.is_stateful


# `_implements` names whose functions the TFLite converter replaces by one builtin op
FUSED_FUNCTIONS = frozenset({"non_max_suppression_padded_v2", "TFLite_Detection_PostProcess",
                             "embedding_matmul"})


def fused_functions(library) -> set[str]:
    """Library functions marked for a TFLite converter fusion."""
    return {f.signature.name for f in library.function
            if f.attr["_implements"].s.decode() in FUSED_FUNCTIONS}


def imported(graph_def):
    """A tf.Graph holding graph_def, for TF's dtypes and static shapes of its tensors."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    return graph


def static_shape(graph, ref: str) -> list | None:
    """A tensor's static shape in an imported graph (None dims unknown), None if its rank is."""
    name, _, port = ref.partition(":")
    shape = graph.get_operation_by_name(name).outputs[int(port or 0)].shape
    return None if shape.rank is None else shape.as_list()


def copy_graph(graph_def):
    """A deep copy of a GraphDef (passes never mutate their input)."""
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    return out


def channels_first(node) -> bool:
    """Whether a conv or pooling node computes in NCHW / NCDHW."""
    return "data_format" in node.attr and node.attr["data_format"].s.startswith(b"NC")


def empty_like(graph_def):
    """A GraphDef with the same versions and function library and no nodes."""
    out = type(graph_def)()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    return out


def topological_order(graph_def) -> list:
    """Nodes with every producer before its readers (Kahn's algorithm, linear time).

    Loop back edges (inputs from NextIteration) are ignored, so v1 while loops sort too. A
    graph already in order (as TF and Grappler write them) comes back as it is.
    """
    nodes = list(graph_def.node)
    seen: set[str] = set()
    for node in nodes:  # the common case, checked first: already in order
        if not all(node_name(ref) in seen for ref in node.input):
            break
        seen.add(node.name)
    else:
        return nodes
    index = {n.name: i for i, n in enumerate(nodes)}
    back = {i for i, n in enumerate(nodes) if n.op in BACK_EDGE_OPS}
    pending = [0] * len(nodes)
    readers: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        producers = {index[s] for s in map(node_name, node.input) if s in index}
        pending[i] = len(producers - back)
        for j in producers:
            readers[j].append(i)
    ready = [i for i, count in enumerate(pending) if count == 0]
    order = []
    while ready:
        i = ready.pop()
        order.append(nodes[i])
        if i in back:
            continue
        for reader in readers[i]:
            pending[reader] -= 1
            if pending[reader] == 0:
                ready.append(reader)
    return order


def keep_nodes(graph_def, keep: set[str]):
    """A copy of graph_def holding only the named nodes (the function library is kept)."""
    out = empty_like(graph_def)
    out.node.extend(n for n in graph_def.node if n.name in keep)
    return out


def bypass_nodes(graph_def, removed: dict[str, str | None]):
    """Remove nodes, rewiring their consumers.

    `removed` maps each node to the ref that replaces its data output 0 (None when
    nothing may read its data). A control edge on a removed node becomes control
    edges on the surviving nodes that the removed node was itself ordered after.
    """

    by_name = {n.name: n for n in graph_def.node}

    def control_sources(name: str, seen: set[str]) -> list[str]:
        # the nearest surviving nodes a removed node was ordered after
        found = []
        for ref in by_name[name].input:
            src = node_name(ref)
            if src in seen or src not in by_name:
                continue
            seen.add(src)
            if src in removed:
                found.extend(control_sources(src, seen))
            elif is_control(ref):
                found.append(src)
        return found

    def resolve(ref: str) -> str:
        while node_name(ref) in removed and not is_control(ref):
            replacement = removed[node_name(ref)]
            if replacement is None:
                raise ValueError(f"{ref} is read but its node is removed without a replacement")
            ref = replacement
        return ref

    out = empty_like(graph_def)
    for node in graph_def.node:
        if node.name in removed:
            continue
        data, control = [], []
        for ref in node.input:
            if is_control(ref):
                src = node_name(ref)
                control.extend(control_sources(src, set()) if src in removed else [src])
            else:
                data.append(resolve(ref))
        data_nodes = {node_name(r) for r in data}
        control = [c for c in dict.fromkeys(control) if c not in data_nodes and c != node.name]
        new = out.node.add()
        new.CopyFrom(node)
        del new.input[:]
        new.input.extend(data + ["^" + c for c in control])
    return out


def unique_name(name: str, taken) -> str:
    """name, or name_1, name_2, ... : the first not in `taken`."""
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    return candidate


def rename_node(graph_def, old: str, new: str) -> None:
    """Rename a node in place and every reference to it."""
    rename_nodes(graph_def, {old: new})


def rename_nodes(graph_def, renames: Mapping[str, str]) -> None:
    """Rename nodes in place (old name -> new, all at once: a new name may be another's old
    one), and every reference to them, in one walk of the graph."""
    if not renames:
        return
    for node in graph_def.node:
        if node.name in renames:
            node.name = renames[node.name]
        for i, ref in enumerate(node.input):
            old = node_name(ref)
            if old in renames:
                node.input[i] = ref.replace(old, renames[old], 1)


def const_value(node):
    """The numpy value of a Const NodeDef."""
    import tensorflow as tf

    return tf.make_ndarray(node.attr["value"].tensor)


def const_view(node):
    """const_value read-only, for readers that do not change it: the tensor's bytes without
    the second copy make_ndarray takes of them."""
    import tensorflow as tf

    tensor = node.attr["value"].tensor
    content = tensor.tensor_content
    if not content or tensor.dtype == DT_STRING:
        return tf.make_ndarray(tensor)
    return np.frombuffer(content, tf.as_dtype(tensor.dtype).as_numpy_dtype).reshape(
        [d.size for d in tensor.tensor_shape.dim])


def set_const_value(node, value) -> None:
    import tensorflow as tf

    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))


def const_node(name: str, value):
    """A Const NodeDef holding a numpy value, in no graph yet."""
    import tensorflow as tf
    from tensorflow.core.framework import node_def_pb2

    node = node_def_pb2.NodeDef(name=name, op="Const")
    tensor = tf.make_tensor_proto(value)
    node.attr["dtype"].type = tensor.dtype
    node.attr["value"].tensor.CopyFrom(tensor)
    return node


def add_const(graph_def, name: str, value):
    """Append a Const node holding a numpy value; returns it."""
    node = graph_def.node.add()
    node.CopyFrom(const_node(name, value))
    return node


def forwarded_reads(readers: dict[str, list], name: str,
                    forwarding: frozenset[str] = FORWARDING_OPS) -> tuple[list, list]:
    """(the forwarding nodes, the other readers) of a node's output, followed through
    forwarding ops such as Identity (readers: consumers())."""
    frontier, forwarders, reads = [name], [], []
    while frontier:
        for reader in readers.get(frontier.pop(), ()):
            if reader.op in forwarding:
                forwarders.append(reader)
                frontier.append(reader.name)
            else:
                reads.append(reader)
    return forwarders, reads


def constant_bytes(graph_def) -> int:
    """Bytes held by the Const nodes of a graph."""
    import numpy as np
    import tensorflow as tf

    total = 0
    for node in graph_def.node:
        if node.op != "Const":
            continue
        tensor = node.attr["value"].tensor
        if tensor.tensor_content:
            total += len(tensor.tensor_content)
        elif tensor.dtype == tf.string.as_datatype_enum:
            total += sum(len(s) for s in tensor.string_val)
        else:
            dims = [d.size for d in tensor.tensor_shape.dim]
            total += int(np.prod(dims)) * tf.dtypes.as_dtype(tensor.dtype).size
    return total


def non_finite_constants(graph_def) -> list[tuple[str, int]]:
    """(Const node, count) for every floating-point constant holding NaN or Inf."""
    import numpy as np

    found = []
    for node in graph_def.node:
        if node.op == "Const" and node.attr["dtype"].type in FLOAT_TYPES:
            value = const_view(node)
            count = int(value.size - np.isfinite(value).sum())
            if count:
                found.append((node.name, count))
    return found


def rename_functions(graph_def, suffix: str):
    """A copy whose library functions all carry `suffix`, so that it can be imported into a
    context that already holds differently-optimized functions of the same names."""
    out = copy_graph(graph_def)
    names = {f.signature.name: f.signature.name + suffix for f in out.library.function}
    if not names:
        return out

    def fix(nodes) -> None:
        for node in nodes:
            for attr in node.attr.values():
                if attr.HasField("func") and attr.func.name in names:
                    attr.func.name = names[attr.func.name]
                for func in attr.list.func:
                    if func.name in names:
                        func.name = names[func.name]

    fix(out.node)
    for fdef in out.library.function:
        fdef.signature.name = names[fdef.signature.name]
        fix(fdef.node_def)
    for grad in out.library.gradient:
        grad.function_name = names.get(grad.function_name, grad.function_name)
    return out


def without_large_constants(graph_def, min_elements: int,
                            chosen: Callable[[str], bool] = lambda name: True,
                            copy: bool = True) -> tuple:
    """A copy of the graph in which each float Const of at least min_elements (that chosen
    accepts) is a Placeholder of the same dtype and shape, and those Const nodes by name:
    for TF work that needs shapes, not weights (Grappler, shape inference), without
    copying the weights."""
    import math

    nodes = graph_def.node
    large = [i for i, node in enumerate(nodes) if node.op == "Const"
             and node.attr["value"].tensor.dtype in FLOAT_TYPES
             and math.prod(d.size for d in node.attr["value"].tensor.tensor_shape.dim)
             >= min_elements and chosen(node.name)]
    if not large and not copy:
        return graph_def, {}
    out, found = empty_like(graph_def), {}
    start = 0
    for i in large:  # the nodes between large constants are copied in bulk
        out.node.extend(nodes[start:i])
        tensor = nodes[i].attr["value"].tensor
        found[nodes[i].name] = nodes[i]
        placeholder = out.node.add(name=nodes[i].name, op="Placeholder",
                                   device=nodes[i].device)
        placeholder.attr["dtype"].type = tensor.dtype
        placeholder.attr["shape"].shape.CopyFrom(tensor.tensor_shape)
        start = i + 1
    out.node.extend(nodes[start:])
    return out, found


def inline_constants(graph_def, values: dict) -> None:
    """Turn the named Placeholders into Consts holding the values, in place."""
    for node in graph_def.node:
        if node.name in values:
            dtype = node.attr["dtype"].type
            node.op = "Const"
            node.attr.clear()
            node.attr["dtype"].type = dtype
            set_const_value(node, values[node.name])


# ops that read a weight next to an activation: no constant folder can fold them while an
# activation is among their inputs, so a kernel that only they read can be a placeholder
# while TF-side tools (Grappler, tf2onnx) work on the graph, and be put back after
KERNEL_READERS = frozenset({"Conv2D", "Conv3D", "DepthwiseConv2dNative", "MatMul",
                            "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3",
                            "Conv2DBackpropInput", "Einsum", "GatherV2", "ResourceGather"})
# ops that only move a kernel's values: what a constant folder computes from a kernel before
# a reader (Keras' EinsumDense reshapes its kernel for BatchMatMulV2), computed here in numpy
LAYOUT_OPS: dict[str, Callable[[np.ndarray, Any, list], np.ndarray]] = {
    "Reshape": lambda v, node, params: v.reshape(params[0]),
    "Transpose": lambda v, node, params: v.transpose(params[0]),
    "ExpandDims": lambda v, node, params: np.expand_dims(v, int(params[0])),
    "Squeeze": lambda v, node, params: np.squeeze(
        v, tuple(node.attr["squeeze_dims"].list.i) or None)}
KERNEL_ELEMENTS = 4096


@dataclass
class SetAside:
    """A graph whose kernels are placeholders: each kernel's Const by name, to put back
    where the graph still has it, and the names a pass must keep."""

    graph_def: Any
    kernels: dict[str, Any]
    keep: list[str]

    def put_back(self, graph_def) -> None:
        """The kernels as constants again, in place; a kernel nothing reads any more (it
        only fed a folded layout op) is dropped."""
        read = {node_name(i) for node in graph_def.node for i in node.input}
        keep = set(self.keep)
        kept = [node for node in graph_def.node if node.name in read
                or node.name not in self.kernels or node.name in keep]
        if len(kept) < len(graph_def.node):
            del graph_def.node[:]
            graph_def.node.extend(kept)
        for node in graph_def.node:
            if node.name in self.kernels and node.op == "Placeholder":
                node.CopyFrom(self.kernels[node.name])


def set_aside_kernels(graph_def, copy: bool = True, fold_layout: bool = False) -> SetAside:
    """without_large_constants for the float Consts of at least KERNEL_ELEMENTS that only
    KERNEL_READERS read next to an activation (through Identity; control edges read no
    value). fold_layout: the layout ops (LAYOUT_OPS) that only move such a kernel are folded
    here once, as a constant folder would fold them: a kernel of the layout op's name, and
    the kernel only they read a scalar that Grappler drops (not in `keep`). copy=False: the
    graph itself when nothing is set aside (for a caller that changes nothing in it)."""
    readers: dict[str, list] = {}  # built for the first large constant
    nodes: dict[str, Any] = {}
    uses: dict[str, str | None] = {}
    folded: dict[str, Any] = {}  # layout op name -> its folded Const

    def data_readers(name: str) -> list:
        if not readers:
            readers.update(consumers(graph_def))
            nodes.update((n.name, n) for n in graph_def.node)
        return [r for r in readers.get(name, [])
                if any(node_name(i) == name and not is_control(i) for i in r.input)]

    def constant(ref: str) -> Any:
        node = nodes.get(node_name(ref))
        while node is not None and node.op == "Identity":
            node = nodes.get(node_name(node.input[0]))
        return node if node is not None and node.op == "Const" else None

    def use(name: str) -> str | None:
        """How a kernel's value is read: "read" by a kernel reader, "folded" only into
        layout ops folded here, or None (another reader: it stays a constant)."""
        if name not in uses:
            uses[name] = None  # while it is looked at: a loop back to it is another reader
            found, seen = data_readers(name), set()
            for reader in found:
                if reader.op == "Identity":
                    seen.add(use(reader.name))
                elif reader.op in KERNEL_READERS and any(
                        node_name(i) != name and not is_control(i) and constant(i) is None
                        for i in reader.input):
                    seen.add("read")
                else:
                    seen.add("folded" if fold(reader, name) else None)
            uses[name] = None if not found or None in seen else \
                "read" if "read" in seen else "folded"
        return uses[name]

    def fold(reader: Any, name: str) -> bool:
        if not fold_layout or reader.op not in LAYOUT_OPS:
            return False
        params = [constant(i) for i in reader.input[1:] if not is_control(i)]
        if None in params or use(reader.name) is None:
            return False
        value = LAYOUT_OPS[reader.op](const_value(constant(name)), reader,
                                      [const_value(p) for p in params])
        folded[reader.name] = const_node(reader.name, np.ascontiguousarray(value))
        folded[reader.name].device = reader.device
        return True

    out, kernels = without_large_constants(graph_def, KERNEL_ELEMENTS,
                                           lambda name: use(name) is not None, copy)
    if not folded:
        return SetAside(out, kernels, sorted(kernels))
    if out is graph_def:
        out = copy_graph(graph_def)
    for node in out.node:
        if node.name in folded:
            node.CopyFrom(folded[node.name])
        elif uses.get(node.name) == "folded" and node.op == "Placeholder":
            # a kernel only folded layout ops read: a scalar constant, which a folder drops
            # with the identities and control edges on it, as it drops a folded kernel
            import tensorflow as tf

            dtype = tf.as_dtype(node.attr["dtype"].type).as_numpy_dtype
            node.CopyFrom(const_node(node.name, np.zeros((), dtype)))
    # the folded kernels are kernels too: left as constants, they cost Grappler 0.9 GB on
    # BERT-base, for a bias it pushes into the next add that both converters fuse anyway
    moved = set_aside_kernels(out, copy=False)
    return SetAside(moved.graph_def, kernels | moved.kernels,
                    sorted(name for name in kernels if uses.get(name) != "folded")
                    + sorted(moved.kernels))


def _contracted_dims(reader: Any, position: int, rank: int,
                     constants: Mapping[str, Any]) -> set[int]:
    """The dimensions of a reader's input at `position` that its output shape does not take
    (a contraction, a conv's input channels, a gathered axis): unknown, they leave every
    shape TF infers as it was."""
    attr = reader.attr
    if reader.op == "MatMul":
        flag = attr["transpose_b" if position else "transpose_a"].b
        return {int(flag) if position else 1 - int(flag)}
    if reader.op.startswith("BatchMatMul"):
        flag = attr["adj_y" if position else "adj_x"].b
        return {rank - (1 if flag == bool(position) else 2)}
    if reader.op in ("Conv2D", "Conv3D", "DepthwiseConv2dNative") and position == 1:
        return {rank - 2}
    if reader.op == "Conv2DBackpropInput" and position == 1:
        return set(range(rank))  # the output's shape is the input_sizes operand
    if reader.op == "GatherV2" and position == 0 and not reader.attr["batch_dims"].i:
        axis = constants.get(node_name(reader.input[2]))
        return set() if axis is None else {int(const_value(axis)) % rank}
    if reader.op == "Einsum":
        terms, _, output = attr["equation"].s.decode().partition("->")
        operands = terms.split(",")
        term = operands[position] if position < len(operands) else "."
        return set() if "." in term or len(term) != rank else \
            {i for i, label in enumerate(term) if label not in output}
    return set()


def hide_contracted_dims(graph_def, names: Container[str]) -> int:
    """Make one dimension unknown in the shape of each named Placeholder (a set-aside
    kernel), in place, where every reader's output shape does without it, and return how
    many: Grappler feeds each placeholder a tensor of its shape (unknown dimensions as 1),
    which for kernels of known shape is a copy of the weights' size."""
    readers = consumers(graph_def)
    constants = {n.name: n for n in graph_def.node if n.op == "Const"}
    hidden = 0
    for node in graph_def.node:
        if node.name not in names or node.op != "Placeholder":
            continue
        dims = node.attr["shape"].shape.dim
        common = set(range(len(dims)))
        for reader in readers.get(node.name, []):
            for position, ref in enumerate(reader.input):
                if node_name(ref) == node.name and not is_control(ref):
                    common &= _contracted_dims(reader, position, len(dims), constants)
        if common and readers.get(node.name):
            dims[max(common, key=lambda i: dims[i].size)].size = -1
            hidden += 1
    return hidden


def hide_shapes(graph_def, names) -> dict:
    """Make the named Placeholders' dimensions unknown, in place, and return their shape
    attributes as they were: Grappler (ours, and tf2onnx's run of it) fills a zero tensor
    for every placeholder of fully known shape, 2 GB and seconds for a 2 GB embedding."""
    shapes = {}
    for node in graph_def.node:
        if node.name in names and node.op == "Placeholder":
            shapes[node.name] = type(node.attr["shape"])()
            shapes[node.name].CopyFrom(node.attr["shape"])
            for dim in node.attr["shape"].shape.dim:
                dim.size = -1
    return shapes


def plain_session(graph):
    """A TF1 Session that runs the graph as written: tfopt ran the optimizers it wants, and
    the default meta-optimizer costs 30 s on a 100k-node graph's first run (its per-node
    cost grows with the graph) against 3 s without it."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

    options = config_pb2.GraphOptions(
        rewrite_options=rewriter_config_pb2.RewriterConfig(disable_meta_optimizer=True),
        optimizer_options=config_pb2.OptimizerOptions(opt_level=config_pb2.OptimizerOptions.L0))
    return tf.compat.v1.Session(graph=graph, config=config_pb2.ConfigProto(graph_options=options))


NOT_TRACED = frozenset({"Const", "Placeholder", "PlaceholderWithDefault", "NoOp", "Switch",
                         "Merge", "Enter", "Exit", "NextIteration", "LoopCond", "RefSwitch",
                         "RefMerge", "RefEnter", "RefExit"})


def graph_tensors(graph_def: Any, feed: Mapping[str, np.ndarray],
                  weights: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every float tensor of a GraphDef's main graph on one feed (placeholders by node name),
    by tensor name `node:k`."""
    graph = imported(graph_def)
    # a batch norm's outputs but the first are its statistics and reserve spaces, memory
    # that inference leaves unset: garbage to compare
    fetches = [t for op in graph.get_operations() if op.type not in NOT_TRACED
               for t in op.outputs[:1 if op.type in NORM_OPS else None]
               if t.dtype.is_floating]
    values = {f"{k}:0": v for k, v in feed.items()}
    values.update({f"{k}:0": v for k, v in (weights or {}).items()})
    with plain_session(graph) as session:
        results = session.run(fetches, values)
    return {t.name: np.asarray(v) for t, v in zip(fetches, results)}


def table_contents(graph_def: Any, find: Any) -> tuple[Any, Any] | None:
    """(keys, values) of the constant table a LookupTableFindV2 reads, or None."""
    nodes = {n.name: n for n in graph_def.node}
    table = nodes.get(node_name(find.input[0]))
    while table is not None and table.op in FORWARDING_OPS:
        table = nodes.get(node_name(table.input[0]))
    if table is None or table.op != "HashTableV2":
        return None
    importer = next((n for n in graph_def.node if n.op == "LookupTableImportV2"
                     and node_name(n.input[0]) == table.name), None)
    if importer is None:
        return None
    keys, values = (nodes.get(node_name(importer.input[i])) for i in (1, 2))
    if keys is None or values is None or keys.op != "Const" or values.op != "Const":
        return None
    return const_value(keys), const_value(values)
