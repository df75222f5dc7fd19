"""Keras' hard_sigmoid and hard_swish, left by tf2onnx as Add(x, 3) -> Clip(0, 6) ->
Mul(1/6) [-> Mul(x, .)], become ONNX HardSigmoid / HardSwish (opset 14).

Written here because neither optimizer matches them (measured on MobileNetV3Small: 19
hard-swish chains stay as four nodes each, with their "+3" reading the conv output).
"""
from __future__ import annotations

from typing import Any

from tfopt.exporters.onnx.graph import OnnxGraph
from tfopt.exporters.onnx.rewrites.registry import register_rewrite
from tfopt.passes.base import PassLog


@register_rewrite("hard_activations", min_opset=14, sees_kernels=False)
def hard_activations(proto: Any, log: PassLog) -> Any:
    import onnx

    graph = OnnxGraph(proto)
    replaced: dict[int, Any] = {}
    dropped: set[int] = set()
    for clip in proto.graph.node:
        if clip.op_type != "Clip":
            continue
        if len(clip.input) != 3 or not (graph.scalar(clip.input[1], 0.0)
                                        and graph.scalar(clip.input[2], 6.0)):
            log.skip(clip.name, "not a Clip to [0, 6]")
            continue
        add = graph.producer.get(clip.input[0])
        x = None if add is None or add.op_type != "Add" or \
            graph.only_reader(add.output[0], "Clip") is None else \
            next((a for a, b in (add.input, add.input[::-1]) if graph.scalar(b, 3.0)), None)
        # without the Add, its "+3" was folded into the bias of the op before (beta 0)
        chain, beta = ([add, clip], 0.5) if x is not None else ([clip], 0.0)
        x = x if x is not None else clip.input[0]
        scale = graph.only_reader(clip.output[0], "Mul") or \
            graph.only_reader(clip.output[0], "Div")
        if scale is None or not any(
                graph.scalar(i, 1 / 6 if scale.op_type == "Mul" else 6.0)
                for i in scale.input if i != clip.output[0]):
            log.skip(clip.name, "its only reader does not divide by 6")
            continue
        chain.append(scale)
        swish = graph.only_reader(scale.output[0], "Mul") if beta else None
        if swish is not None and x in swish.input and swish.input[0] != swish.input[1]:
            chain.append(swish)
            new = onnx.helper.make_node("HardSwish", [x], list(swish.output), name=swish.name)
        else:
            new = onnx.helper.make_node("HardSigmoid", [x], list(scale.output),
                                        name=scale.name, alpha=1 / 6, beta=beta)
        if any(id(n) in dropped for n in chain):
            log.skip(clip.name, "overlaps a chain already rewritten")
            continue
        replaced[id(chain[-1])] = new
        dropped.update(id(n) for n in chain[:-1])
        log.change("fused", node=new.name, op=new.op_type, nodes=len(chain))
    if replaced:
        graph.replace(replaced, dropped)
    return proto
