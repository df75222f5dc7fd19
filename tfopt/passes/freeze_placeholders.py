"""Turn training switches into constants, so that the control flow they drive can fold.

    PlaceholderWithDefault(default), not an input  -> default   (is_training, keep_prob, ...)
    Placeholder | PlaceholderWithDefault named in --freeze-placeholder -> Const(value)

A PlaceholderWithDefault that nothing feeds takes its default at serving time, so this keeps
the meaning of the graph. Written here because Grappler never folds a placeholder.
"""
from __future__ import annotations

from tfopt.graph import add_const, bypass_nodes, const_value, node_name, reachable
from tfopt.passes.base import PassContext, PassLog, register

PLACEHOLDERS = frozenset({"Placeholder", "PlaceholderWithDefault"})


@register("freeze_placeholders")
def freeze_placeholders(graph_def, ctx: PassContext, log: PassLog):
    nodes = {n.name: n for n in graph_def.node}
    live = reachable(graph_def, ctx.outputs)
    constants, defaults = {}, {}
    for node in graph_def.node:
        if node.op not in PLACEHOLDERS:
            continue
        if node.name in ctx.values:
            constants[node.name] = ctx.values[node.name]
        elif node.name in ctx.inputs:
            if node.op == "PlaceholderWithDefault":
                log.skip(node.name, "a signature input: fed at serving time, default unused")
        elif node.name in ctx.weights:
            log.skip(node.name, "an external weight: its value stays out of the graph "
                     "(--large-weight-bytes)")
        elif node.op == "Placeholder":
            if node.name in live:
                log.skip(node.name, "no value given; pass --freeze-placeholder "
                         f"{node.name}=VALUE to make it a constant")
        elif node.name in live:
            default = nodes.get(node_name(node.input[0]))
            if default is not None and default.op == "Const":
                constants[node.name] = const_value(default)
            else:
                defaults[node.name] = node.input[0]
    if not constants and not defaults:
        return graph_def
    for name, value in constants.items():
        log.change("constant", node=name, value=value.tolist())
    for name, ref in defaults.items():
        log.change("default", node=name, input=ref)
    out = bypass_nodes(graph_def, defaults)  # a copy, even with nothing to bypass
    kept = [n for n in out.node if n.name not in constants]
    del out.node[:]
    out.node.extend(kept)
    for name, value in constants.items():
        add_const(out, name, value.astype(_dtype(nodes[name])))
    return out


def _dtype(node):
    import tensorflow as tf

    return tf.dtypes.as_dtype(node.attr["dtype"].type).as_numpy_dtype
