"""Inline the function calls that Keras 3 marks XLA-only, so that exporters see their ops.

    (Stateful)PartitionedCall(f, _XlaMustCompile | _noinline)  -> the body of f

Keras 3 puts grouped convolutions in such functions; Grappler will not inline them and
tf2onnx leaves them as raw calls. Without the marks Grappler's function optimizer inlines
them. TF's CPU kernels may then no longer run the graph (grouped Conv2D), which is why only
exporters that need it (ONNX) run this pass, on their own copy.
"""
from __future__ import annotations

from tfopt.graph import copy_graph
from tfopt.passes.base import PassContext, PassLog, register
from tfopt.passes.grappler import CALLS, optimize

MARKS = ("_XlaMustCompile", "_noinline")


@register("inline_xla_calls")
def inline_xla_calls(graph_def, ctx: PassContext, log: PassLog):
    calls = [n for n in graph_def.node if n.op in CALLS]
    if not calls:
        return graph_def
    out = copy_graph(graph_def)
    for node in out.node:
        if node.op in CALLS:
            marked = [m for m in MARKS if m in node.attr]
            for mark in marked:
                node.attr.pop(mark)
            log.change("inlined", node=node.name, function=node.attr["f"].func.name,
                       unmarked=marked)
    for function in out.library.function:
        for mark in MARKS:
            function.attr.pop(mark, None)
    out = optimize(out, list(ctx.inputs + ctx.outputs), ["function"])
    left = [n.name for n in out.node if n.op in CALLS]
    for name in left:
        log.skip(name, "Grappler's function optimizer kept the call")
    return out
