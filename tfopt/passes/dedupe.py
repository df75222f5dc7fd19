"""Merge identical constants and identical nodes (common-subexpression elimination).

Two nodes are identical when they have the same op, the same attributes (a Const's value
included) and the same inputs once earlier duplicates are merged; one topological sweep with
a hash per node, so linear time. Stateful ops (random, variables, calls) are never merged.
Written here because Grappler's CSE lives in its arithmetic optimizer, which is off.
"""
from __future__ import annotations

import hashlib

from tfopt.graph import (
    DT_STRING,
    const_value,
    empty_like,
    is_control,
    is_stateful,
    node_name,
    topological_order,
)
from tfopt.passes.base import PassContext, PassLog, register

# tensor lists: each loop fills its own, and tf2onnx turns one into the scan output of the
# loop it feeds, so two loops sharing one lose it (tf2onnx: "Cannot find ... '@@ALLOC'")
ALLOCATIONS = frozenset({"TensorListReserve", "EmptyTensorList", "TensorArrayV3",
                         "TensorListFromTensor"})


def _key(node, inputs: list[str]) -> bytes:
    digest = hashlib.sha256(node.op.encode())
    for ref in inputs:
        digest.update(b"\0" + ref.encode())
    for name in sorted(node.attr):
        if name == "_output_shapes":
            continue
        digest.update(b"\1" + name.encode())
        if name == "value" and node.op == "Const" and node.attr["dtype"].type != DT_STRING:
            # by value: one number may be written as int_val or as tensor_content (the
            # array's own little-endian bytes, so used as they are)
            tensor = node.attr["value"].tensor
            dims = [d.size for d in tensor.tensor_shape.dim]
            digest.update(f"{tensor.dtype}{dims}".encode())
            digest.update(tensor.tensor_content or const_value(node).tobytes())
        else:
            digest.update(node.attr[name].SerializeToString(deterministic=True))
    digest.update(node.device.encode())
    return digest.digest()


@register("dedupe")
def dedupe(graph_def, ctx: PassContext, log: PassLog):
    merged: dict[str, str] = {}  # duplicate -> the node kept
    seen: dict[bytes, str] = {}
    seen_stateful: dict[bytes, str] = {}

    def remap(ref: str) -> str:
        control = is_control(ref)
        bare = ref[1:] if control else ref
        name = node_name(bare)
        if name not in merged:
            return ref
        return ("^" if control else "") + merged[name] + bare[len(name):]

    for node in topological_order(graph_def):
        if node.name in ctx.protected:
            continue
        inputs = [remap(r) for r in node.input]
        data = [r for r in inputs if not is_control(r)]
        key = _key(node, data + sorted(r for r in inputs if is_control(r)))
        if node.op in ALLOCATIONS:
            if key in seen_stateful:
                log.skip(node.name, f"identical to {seen_stateful[key]}, but each loop fills "
                         f"its own {node.op}")
            seen_stateful.setdefault(key, node.name)
            continue
        if is_stateful(node.op):
            if key in seen_stateful:
                log.skip(node.name, f"identical to {seen_stateful[key]}, but {node.op} is "
                         "stateful: merging would change how often it runs")
            seen_stateful.setdefault(key, node.name)
            continue
        if key in seen:
            merged[node.name] = seen[key]
            log.change("merged", node=node.name, into=seen[key], op=node.op)
        else:
            seen[key] = node.name
    if not merged:
        return graph_def
    log.removed["duplicates"] += len(merged)
    out = empty_like(graph_def)
    kept = [n for n in graph_def.node if n.name not in merged]
    out.node.extend(kept)  # in bulk; then only the readers of merged nodes are rewired
    for new, node in zip(out.node, kept):
        if not any(node_name(r) in merged for r in node.input):
            continue
        data = [remap(r) for r in node.input if not is_control(r)]
        sources = {node_name(r) for r in data}
        control = [c for c in dict.fromkeys(remap(r) for r in node.input if is_control(r))
                   if c[1:] not in sources]
        del new.input[:]
        new.input.extend(data + control)
    return out
