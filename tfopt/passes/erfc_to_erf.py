"""Exact GELU's complementary error function, which tf2onnx has no handler for, in terms of
the error function every exporter has.

    Erfc(x)  -> Sub(1, Erf(x))
"""
from __future__ import annotations

import numpy as np

from tfopt.graph import add_const, copy_graph, unique_name
from tfopt.passes.base import PassContext, PassLog, register


@register("erfc_to_erf")
def erfc_to_erf(graph_def, ctx: PassContext, log: PassLog):
    import tensorflow as tf

    if not any(n.op == "Erfc" for n in graph_def.node):
        return graph_def
    out = copy_graph(graph_def)
    taken = {n.name for n in out.node}
    for node in [n for n in out.node if n.op == "Erfc"]:
        erf = out.node.add(name=unique_name(f"{node.name}/erf", taken), op="Erf",
                           input=list(node.input))
        erf.attr["T"].CopyFrom(node.attr["T"])
        dtype = tf.dtypes.as_dtype(node.attr["T"].type).as_numpy_dtype
        one = add_const(out, unique_name(f"{node.name}/one", taken), np.ones((), dtype))
        taken.update((erf.name, one.name))
        node.op = "Sub"
        node.input[:] = [one.name, erf.name]
        log.change("rewritten", node=node.name, pattern="Erfc -> 1 - Erf")
    return out
