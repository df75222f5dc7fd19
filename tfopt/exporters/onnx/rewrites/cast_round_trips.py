"""fp32 -> Cast(fp16) -> Cast(fp32) between two fp32 nodes becomes a plain edge.

onnxruntime's fp16 converter casts every blocked node's output to fp16 and back, so a value
that overflows fp16 overflows there even when both of its nodes stay fp32. Written here
because neither onnxoptimizer nor onnxslim removes a lossy cast pair (it is not a no-op).
"""
from __future__ import annotations

from typing import Any

from tfopt.exporters.onnx.graph import OnnxGraph
from tfopt.exporters.onnx.rewrites.registry import register_rewrite
from tfopt.passes.base import PassLog


def _cast_to(node: Any) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) \
        if node.op_type == "Cast" else None


@register_rewrite("cast_round_trips", min_opset=6)
def cast_round_trips(proto: Any, log: PassLog) -> Any:
    import onnx

    graph = OnnxGraph(proto)
    rewired: dict[str, str] = {}
    dropped: set[int] = set()
    for node in proto.graph.node:
        if _cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        first = graph.producer.get(node.input[0])
        if first is None or _cast_to(first) != onnx.TensorProto.FLOAT16:
            log.skip(node.name, "its input is not a Cast to fp16")
            continue
        if node.output[0] in graph.outputs:  # a graph output keeps its producer
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = first.input[0]
        else:
            rewired[node.output[0]] = first.input[0]
            dropped.add(id(node))
        log.change("removed", node=node.name, input=first.input[0])
    if not log.changes:
        return proto
    for node in proto.graph.node:
        node.input[:] = [rewired.get(i, i) for i in node.input]
    kept = [n for n in proto.graph.node if id(n) not in dropped]
    used = {i for n in kept for i in n.input} | graph.outputs
    unread = {id(n) for n in kept if n.op_type == "Cast" and not any(o in used for o in n.output)}
    graph.replace({}, dropped | unread)
    return proto
