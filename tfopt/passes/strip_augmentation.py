"""Make random augmentation layers what they are at inference.

Keras 3's `model.export` and tf_keras' trace RandomFlip, RandomRotation, RandomCrop, ...
active: each draws from a seed variable that every call advances. Such a layer is found by
its name scope, the innermost one around a draw that

    reads and writes only seed state:  ReadVariableOp(seed) ... AssignVariableOp(seed),
                                       RngReadAndSkip(state), or a stateful RandomUniform
    takes one tensor and gives one:    x -> [scope/...] -> y

and it becomes y = x when the shapes agree (every such layer at inference), or x center-
cropped to y's aspect ratio and resized to y's size when they do not (RandomCrop at
inference, as Keras documents it and tf_keras' smart_resize does). Written here because
Grappler keeps stateful random ops and no converter knows a layer from a graph.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfopt.categories import writes_variable
from tfopt.graph import (
    bypass_nodes,
    called_functions,
    const_node,
    copy_graph,
    imported,
    is_control,
    keep_nodes,
    node_name,
    reachable,
    tensor_name,
    topological_order,
    unique_name,
)
from tfopt.passes.base import PassContext, PassLog, register

# ops that draw random numbers (stateless ones included: their seed may be state)
_DRAW = re.compile(r"Random|Multinomial|TruncatedNormal|^StatefulUniform|^StatefulStandard")
# ops that make a draw differ from call to call: seed-state writes and unseeded draws
_STATEFUL_DRAW = re.compile(r"^(RandomUniform|RandomUniformInt|RandomStandardNormal|"
                            r"TruncatedNormal|RandomGamma|RandomPoisson|RandomPoissonV2|"
                            r"RandomShuffle|Multinomial|StatefulUniform\w*|"
                            r"StatefulStandardNormal\w*|StatefulTruncatedNormal|"
                            r"StatefulRandomBinomial)$")
_VARIABLE_READS = frozenset({"ReadVariableOp", "ResourceGather", "ResourceGatherNd"})


@dataclass
class _Kinds:
    """What a node does, its called functions included."""

    draws: bool = False
    advances: bool = False  # writes seed state or draws unseeded


def _function_kinds(library) -> dict[str, _Kinds]:
    """What each library function does, its callees included. Iterative: a hostile library
    nests thousands deep, or calls itself."""
    functions = {f.signature.name: f for f in library.function}
    calls = {name: [c for n in f.node_def for c in called_functions(n, functions)]
             for name, f in functions.items()}
    kinds: dict[str, _Kinds] = {}
    for root in functions:
        stack, opened = [root], set()
        while stack:
            name = stack[-1]
            if name in kinds:
                stack.pop()
                continue
            if name not in opened:
                opened.add(name)
                stack.extend(c for c in calls[name] if c not in kinds and c not in opened)
                continue
            stack.pop()
            found = _Kinds()
            for node in functions[name].node_def:
                own = _node_kinds(node)
                found.draws |= own.draws
                found.advances |= own.advances
            for callee in calls[name]:
                sub = kinds.get(callee, _Kinds())  # a callee still open: a cycle
                found.draws |= sub.draws
                found.advances |= sub.advances
            kinds[name] = found
    return kinds


def _node_kinds(node) -> _Kinds:
    return _Kinds(draws=bool(_DRAW.search(node.op)),
                  advances=writes_variable(node.op) or bool(_STATEFUL_DRAW.match(node.op)))


def _scopes(name: str) -> list[str]:
    """The name scopes around a node, innermost first ('a/b/c' -> ['a/b', 'a'])."""
    parts = name.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


@register("strip_augmentation")
def strip_augmentation(graph_def, ctx: PassContext, log: PassLog):
    library = {f.signature.name for f in graph_def.library.function}
    calls = _function_kinds(graph_def.library) if library else {}

    def kinds(node) -> _Kinds:
        own = _node_kinds(node)
        for callee in called_functions(node, library):
            own.draws |= calls[callee].draws
            own.advances |= calls[callee].advances
        return own

    out, left = graph_def, set()
    while True:  # a layer at a time, in graph order: shapes come from the graph as it is now
        node_kinds = {n.name: kinds(n) for n in out.node}
        live = reachable(out, ctx.outputs)
        draw = next((n.name for n in topological_order(out) if node_kinds[n.name].draws
                     and n.name in live and n.name not in left), None)
        if draw is None:
            return out
        layer, reasons = _innermost_layer(draw, out, ctx, node_kinds)
        if layer is None:
            left.add(draw)
            log.skip(draw, "a random draw left as it is: " + "; ".join(reasons[:2]))
            continue
        log.removed["augmentation"] += 1
        log.change("inference", layer=layer.scope, becomes=layer.becomes,
                   nodes=len(layer.members))
        work = copy_graph(out)
        work.node.extend(layer.added)
        removed: dict[str, str | None] = dict.fromkeys(layer.members)
        removed[node_name(layer.output)] = layer.replacement
        work = bypass_nodes(work, removed)
        out = keep_nodes(work, reachable(work, ctx.outputs) | set(ctx.inputs))


def _innermost_layer(draw: str, graph_def, ctx: PassContext, node_kinds: dict
                     ) -> tuple[_Layer | None, list[str]]:
    """The innermost name scope around a draw that is an augmentation layer with an
    inference form, or None and why each scope is not."""
    graph = imported(graph_def)
    nodes = {n.name: n for n in graph_def.node}
    reasons = []
    for scope in _scopes(draw):
        layer = _Layer.find(scope, nodes, graph, ctx, node_kinds)
        if isinstance(layer, str):
            reasons.append(f"scope {scope}: {layer}")
        elif layer.inference(set(nodes)) is None:
            reasons.append(f"scope {scope}: {layer.becomes}")
        else:
            return layer, reasons
    return None, reasons


@dataclass
class _Layer:
    scope: str
    members: list[str]
    input: str  # the tensor it takes
    output: str  # the tensor it gives
    graph: Any  # the imported tf.Graph, for dtypes and static shapes
    becomes: str = ""  # its inference form, or why it has none
    added: list = field(default_factory=list)  # the nodes of its inference form
    replacement: str | None = None  # the tensor that replaces its output

    @classmethod
    def find(cls, scope: str, nodes: dict, graph, ctx: PassContext,
             node_kinds: dict[str, _Kinds]) -> _Layer | str:
        """The layer a name scope holds, or why it is not a random augmentation layer."""
        prefix = scope + "/"
        members = [name for name in nodes if name == scope or name.startswith(prefix)]
        inside = set(members)
        if not any(node_kinds[m].advances for m in members):
            return "its draws are seeded by constants, so they are the model's own"
        inputs, handles, written = set(), set(), set()
        for name in members:
            node = nodes[name]
            data = [ref for ref in node.input if not is_control(ref)]
            if writes_variable(node.op):
                written.add(_handle_source(data[0], nodes))
            for ref in data:
                source = node_name(ref)
                if source in inside:
                    continue
                tensor = graph.get_tensor_by_name(tensor_name(ref))
                if tensor.dtype.name == "resource":
                    handle = _handle_source(ref, nodes)
                    handles.add(handle)
                    if node.op not in _VARIABLE_READS and node_kinds[name].advances:
                        written.add(handle)  # passed into a call that writes state
                elif nodes[source].op != "Const":
                    inputs.add(tensor_name(ref))
        weights = handles - written
        if weights:
            return (f"it reads {len(weights)} variable(s) it does not update (weights), so "
                    "it computes more than an augmentation")
        outputs = {tensor_name(ref) for name, node in nodes.items() if name not in inside
                   for ref in node.input if not is_control(ref) and node_name(ref) in inside}
        outputs |= {o + ":0" for o in ctx.outputs if o in inside}
        if len(inputs) != 1 or len(outputs) != 1:
            return f"it takes {len(inputs)} tensor(s) and gives {len(outputs)}"
        (output,) = outputs
        if not output.endswith(":0") and ":" in output:
            return "its output is not its node's first"
        return cls(scope, members, inputs.pop(), output, graph)

    def inference(self, taken: set[str]) -> str | None:
        """Builds the layer's inference form (`added`, `replacement`); returns the tensor
        that replaces its output, or None when there is none (`becomes` then says why)."""
        self.replacement = self._inference(self.added, taken)
        return self.replacement

    def _inference(self, added: list, taken: set[str]) -> str | None:
        x = self.graph.get_tensor_by_name(tensor_name(self.input))
        y = self.graph.get_tensor_by_name(tensor_name(self.output))
        x_shape, y_shape = _static_shape(x), _static_shape(y)
        if not (x.dtype == y.dtype or (y.dtype.is_floating and (x_shape.rank or 0) >= 3)):
            self.becomes = f"it maps {x.dtype.name} to {y.dtype.name}"
            return None
        if x_shape.rank is None or y_shape.rank is None:
            self.becomes = f"the rank of its input or output is unknown ({x_shape}, {y_shape})"
            return None
        dims_in, dims_out = x_shape.as_list(), y_shape.as_list()
        if x_shape.rank == y_shape.rank and dims_in[1:] == dims_out[1:]:  # None == None
            self.becomes = "identity"
            return self._cast(self.input, x.dtype, y.dtype, added, taken)
        if x_shape.is_compatible_with(y_shape) and all(
                a is None or b is None for a, b in zip(dims_in[1:], dims_out[1:]) if a != b) \
                and None not in dims_in[1:]:
            # its output size is computed from the input's at run time (tf_keras' transforms);
            # a crop's size is a constant of the layer, so this is no crop
            self.becomes = "identity (same size at run time)"
            return self._cast(self.input, x.dtype, y.dtype, added, taken)
        if x_shape.rank != 4 or y_shape.rank != 4 or dims_in[3] != dims_out[3]:
            self.becomes = (f"it maps {x_shape} to {y_shape}, which is neither an identity nor "
                            "a channels-last crop")
            return None
        height, width, target_h, target_w = dims_in[1], dims_in[2], dims_out[1], dims_out[2]
        if None in (height, width, target_h, target_w):
            self.becomes = f"it crops {x_shape} to {y_shape}, sizes that are not all known"
            return None
        # Keras' crop_to_aspect_ratio / tf_keras' smart_resize, to the same integer rounding
        crop_h = max(min(height, int(float(width * target_h) / target_w)), 1)
        crop_w = max(min(width, int(float(height * target_w) / target_h)), 1)
        top, left = int(float(height - crop_h) / 2), int(float(width - crop_w) / 2)
        ref = self._add(added, taken, "crop", "Slice", [
            self.input,
            self._const(added, taken, "crop/begin", np.array([0, top, left, 0], np.int32)),
            self._const(added, taken, "crop/size", np.array([-1, crop_h, crop_w, -1], np.int32))],
            T=x.dtype.as_datatype_enum, Index=3)
        self.becomes = f"center crop {crop_h}x{crop_w}"
        dtype = x.dtype
        if (crop_h, crop_w) != (target_h, target_w):
            size = self._const(added, taken, "resize/size",
                               np.array([target_h, target_w], np.int32))
            ref = self._add(added, taken, "resize", "ResizeBilinear", [ref, size],
                            T=x.dtype.as_datatype_enum, align_corners=False,
                            half_pixel_centers=True)
            self.becomes += f", bilinear resize to {target_h}x{target_w}"
            dtype = _float32()
        return self._cast(ref, dtype, y.dtype, added, taken)

    def _cast(self, ref: str, have, want, added: list, taken: set[str]) -> str:
        if have == want:
            return ref
        return self._add(added, taken, "cast", "Cast", [ref], SrcT=have.as_datatype_enum,
                         DstT=want.as_datatype_enum, Truncate=False)

    def _const(self, added: list, taken: set[str], suffix: str, value: np.ndarray) -> str:
        node = const_node(unique_name(f"{self.scope}/inference/{suffix}", taken), value)
        taken.add(node.name)
        added.append(node)
        return node.name

    def _add(self, added: list, taken: set[str], suffix: str, op: str, inputs: list[str],
             **attrs) -> str:
        from tensorflow.core.framework import node_def_pb2

        node = node_def_pb2.NodeDef(name=unique_name(f"{self.scope}/inference/{suffix}", taken),
                                    op=op, input=inputs)
        for key, value in attrs.items():
            if isinstance(value, bool):
                node.attr[key].b = value
            else:
                node.attr[key].type = value
        taken.add(node.name)
        added.append(node)
        return node.name


def _static_shape(tensor):
    """A tensor's static shape, with what a call or control-flow op declares in its
    `output_shapes` (TF's shape inference does not read it back), through Identity nodes."""
    import tensorflow as tf

    shape, op, index = tensor.shape, tensor.op, tensor.value_index
    while op.type == "Identity":
        index, op = op.inputs[0].value_index, op.inputs[0].op
    attr = op.node_def.attr
    declared = attr["output_shapes"].list.shape if "output_shapes" in attr else []
    if index < len(declared):
        with contextlib.suppress(ValueError):  # at odds with inference: keep inference's
            shape = shape.merge_with(tf.TensorShape(declared[index]))
    return shape


def _float32():
    import tensorflow as tf

    return tf.float32


def _handle_source(ref: str, nodes: dict) -> str:
    """The node a resource handle comes from, through the Identity nodes inlining adds."""
    name = node_name(ref)
    while name in nodes and nodes[name].op == "Identity" and nodes[name].input:
        name = node_name(nodes[name].input[0])
    return name
