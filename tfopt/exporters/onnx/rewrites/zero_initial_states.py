"""An LSTM/GRU/RNN initial state that is zero whatever the input drops out: the op's omitted
initial_h/initial_c is zero by definition.

    LSTM(X, W, R, B, seq_lens, Unsqueeze(Expand(0, Concat(Shape(X)[0:1], [units]))), ...)
      -> LSTM(X, W, R, B, seq_lens, "", ...)

Keras builds its zero state from the input's batch; tf2onnx keeps that computation (seven
nodes per state). Written here because the constant folders cannot: the zeros' shape depends
on the input. The shape computation left unread is removed.
"""
from __future__ import annotations

from typing import Any

from tfopt.exporters.onnx.graph import OnnxGraph
from tfopt.exporters.onnx.rewrites.registry import register_rewrite
from tfopt.passes.base import PassLog

STATES = {"LSTM": {5: "initial_h", 6: "initial_c"}, "GRU": {5: "initial_h"},
          "RNN": {5: "initial_h"}}
# ops whose output is all zeros when their first input is (the rest only shape it)
ZERO_PRESERVING = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Expand", "Tile", "Identity",
                             "Cast", "Transpose", "Flatten"})


def _zero_source(graph: OnnxGraph, name: str) -> str | None:
    """How the tensor is known to be all zeros (the ops traced back), or None."""
    path: list[str] = []
    while True:
        constant = graph.constants.get(name)
        if constant is not None:
            return "(".join([*path, "0"]) + ")" * len(path) if not constant.any() else None
        node = graph.producer.get(name)
        if node is None:
            return None
        if node.op_type == "ConstantOfShape":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                from onnx import numpy_helper

                if numpy_helper.to_array(value).any():
                    return None
            return "(".join([*path, "ConstantOfShape"]) + ")" * len(path)
        if node.op_type not in ZERO_PRESERVING:
            return None
        path.append(node.op_type)
        name = node.input[0]


@register_rewrite("zero_initial_states", min_opset=7, sees_kernels=False)
def zero_initial_states(proto: Any, log: PassLog) -> Any:
    graph = OnnxGraph(proto)
    changed = False
    for node in proto.graph.node:
        for index, state in STATES.get(node.op_type, {}).items():
            if index >= len(node.input) or not node.input[index]:
                continue
            source = _zero_source(graph, node.input[index])
            if source is None:
                log.skip(node.name, f"{state} is not known to be zero")
                continue
            node.input[index] = ""
            while node.input and not node.input[-1]:  # trailing omitted inputs go
                node.input.pop()
            changed = True
            log.change("dropped", node=node.name, input=state, pattern=source)
    if changed:
        log.change("removed", nodes=graph.remove_unread_nodes(),
                   pattern="the zero states' shape computation")
    return proto
