"""Mixed-precision compute (Keras' `mixed_float16`, `mixed_bfloat16`) rewritten to float32,
for targets whose builtins have no such kernels: every float16/bfloat16 type attribute and
constant becomes float32 (function bodies included), a Cast between two floats becomes an
Identity, and the signature keeps its dtypes (a Cast at each float16 input and output).

    Cast(x: f32 -> f16) -> Conv2D[T=f16] -> Cast(f16 -> f32)   ->   Conv2D[T=f32]

Written here because the TFLite converter turns float16 Conv2D into Flex ops and
tf2onnx writes bfloat16 Conv/MatMul, which ONNX does not define.
"""
from __future__ import annotations

from tfopt.graph import (
    DT_BFLOAT16,
    DT_FLOAT,
    DT_HALF,
    compute_precision,
    const_value,
    copy_graph,
    set_const_value,
    unique_name,
)
from tfopt.passes.base import PassContext, PassLog, register

_NAMES = {DT_HALF: "float16", DT_BFLOAT16: "bfloat16"}


def _to_fp32(graph_def, ctx: PassContext, log: PassLog, lowered: frozenset[int]):
    precision = compute_precision(graph_def)
    if precision not in {_NAMES[t] for t in lowered}:
        return graph_def
    out = copy_graph(graph_def)
    boundary = _keep_signature_dtypes(out, ctx, lowered)
    changed = sum(_retype(node, lowered) for node in out.node if node.name not in boundary)
    for function in out.library.function:
        for arg in list(function.signature.input_arg) + list(function.signature.output_arg):
            if arg.type in lowered:
                arg.type = DT_FLOAT
        changed += sum(_retype(node, lowered) for node in function.node_def)
        _rename_cast_outputs(function)
    log.change("to_fp32", compute=precision, nodes=changed,
               note=f"the original's {precision} compute runs in float32 here")
    return out


def _retype(node, lowered: frozenset[int]) -> bool:
    """Float32 in place of the lowered types in a node's attributes; a Const's value too."""
    changed = False
    if node.op == "Const" and node.attr["dtype"].type in lowered:
        set_const_value(node, const_value(node).astype("float32"))
        node.attr["dtype"].type = DT_FLOAT
        return True
    for attr in node.attr.values():
        if attr.type in lowered:
            attr.type = DT_FLOAT
            changed = True
        for i, t in enumerate(attr.list.type):
            if t in lowered:
                attr.list.type[i] = DT_FLOAT
                changed = True
    if node.op == "Cast" and node.attr["SrcT"].type == node.attr["DstT"].type:
        dtype = node.attr["SrcT"].type
        node.op = "Identity"
        node.attr.clear()
        node.attr["T"].type = dtype
    return changed


def _rename_cast_outputs(function) -> None:
    """A function body names outputs by their arg: a Cast made an Identity gives `output`,
    not `y`."""
    made = {n.name for n in function.node_def if n.op == "Identity" and "SrcT" not in n.attr}
    if not made:
        return
    prefixes = tuple(f"{name}:y:" for name in made)

    def fixed(ref: str) -> str:
        if ref.startswith(prefixes):
            name, _, index = ref.split(":")
            return f"{name}:output:{index}"
        return ref

    for node in function.node_def:
        node.input[:] = [fixed(ref) for ref in node.input]
    for key, ref in function.ret.items():
        function.ret[key] = fixed(ref)


def _keep_signature_dtypes(graph_def, ctx: PassContext, lowered: frozenset[int]) -> set[str]:
    """Casts at the signature's float16 inputs (to float32) and outputs (back); returns the
    nodes whose dtype stays. A bfloat16 input or output becomes float32: neither runtime
    has the type, and verification compares in float32 anyway."""
    nodes = {n.name: n for n in graph_def.node}
    taken = set(nodes)
    kept = set()
    for name in ctx.inputs:
        node = nodes.get(name)
        if node is None or node.attr["dtype"].type != DT_HALF or DT_HALF not in lowered:
            continue
        cast = _cast(graph_def, unique_name(f"{name}/fp32", taken), name,
                     node.attr["dtype"].type, DT_FLOAT)
        taken.add(cast.name)
        kept.add(cast.name)
        for reader in graph_def.node:
            if reader is not cast:
                reader.input[:] = [cast.name if ref in (name, f"{name}:0") else ref
                                   for ref in reader.input]
        kept.add(name)
    for name in ctx.outputs:
        node = nodes.get(name)
        if node is None or node.attr["T"].type != DT_HALF or DT_HALF not in lowered:
            continue
        cast = _cast(graph_def, unique_name(f"{name}/float16", taken),
                     node.input[0], DT_FLOAT, node.attr["T"].type)
        taken.add(cast.name)
        node.input[0] = cast.name
        kept.update((name, cast.name))
    return kept


def _cast(graph_def, name: str, source: str, src: int, dst: int):
    cast = graph_def.node.add(name=name, op="Cast", input=[source])
    cast.attr["SrcT"].type = src
    cast.attr["DstT"].type = dst
    cast.attr["Truncate"].b = False
    return cast


@register("compute_in_fp32")
def compute_in_fp32(graph_def, ctx: PassContext, log: PassLog):
    return _to_fp32(graph_def, ctx, log, frozenset({DT_HALF, DT_BFLOAT16}))


@register("bfloat16_in_fp32")
def bfloat16_in_fp32(graph_def, ctx: PassContext, log: PassLog):
    return _to_fp32(graph_def, ctx, log, frozenset({DT_BFLOAT16}))
