"""Release the function calls that freezing kept whole for a converter fusion.

    PartitionedCall(f: _implements=non_max_suppression_padded_v2, _XlaMustCompile)
        -> PartitionedCall(f)

Freezing marks them `_XlaMustCompile` (loaders/weights.py) so that no Grappler run inlines
or specializes them; TF would compile such a call with XLA, so every exporter that keeps the
call (TFLite fuses it into one builtin; the .pb and SavedModel run it) removes the mark on
its own copy, and `_noinline` with it, which would keep the TFLite converter from inlining
the fused op.
"""
from __future__ import annotations

from tfopt.graph import copy_graph, fused_functions
from tfopt.passes.base import PassContext, PassLog, register

MARKS = ("_XlaMustCompile", "_noinline")


@register("unmark_fused_calls")
def unmark_fused_calls(graph_def, ctx: PassContext, log: PassLog):
    fused = fused_functions(graph_def.library)
    if not fused:
        return graph_def
    out = copy_graph(graph_def)
    for function in out.library.function:
        if function.signature.name in fused:
            function.attr.pop("_noinline", None)
    bodies = [n for f in out.library.function for n in f.node_def]
    for node in list(out.node) + bodies:
        if "f" in node.attr and node.attr["f"].func.name in fused:
            for mark in MARKS:
                node.attr.pop(mark, None)
            log.change("unmarked", node=node.name, function=node.attr["f"].func.name)
    return out
