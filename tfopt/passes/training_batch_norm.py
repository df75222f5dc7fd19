"""Turn batch norms hard-wired to training mode into inference batch norms.

    FusedBatchNorm*(x, scale, offset, _, _, is_training=True)
      -> FusedBatchNorm*(x, scale, offset, moving_mean, moving_variance, is_training=False)

The moving statistics are the variables that the batch mean (output 1) and batch variance
(output 2) are assigned into. Runs before variables are frozen, while the updates exist.
Written here because no TF tool rewrites training-mode batch norm, and converters refuse it.
"""
from __future__ import annotations

from tfopt.errors import InputError
from tfopt.graph import (
    FORWARDING_OPS,
    NORM_OPS,
    consumers,
    copy_graph,
    is_control,
    node_name,
    reachable,
    unique_name,
)
from tfopt.passes.base import PassContext, PassLog, register

VARIABLES = frozenset({"VariableV2", "Variable", "VarHandleOp"})
ASSIGNS = frozenset({"Assign", "AssignSub", "AssignAdd", "AssignVariableOp",
                     "AssignSubVariableOp", "AssignAddVariableOp"})
_MAX_DEPTH = 8  # moving-average updates are a few elementwise ops (sub, mul) deep


def _variable(ref: str, nodes: dict):
    node = nodes.get(node_name(ref))
    while node is not None and node.op in FORWARDING_OPS:
        node = nodes.get(node_name(node.input[0]))
    return node if node is not None and node.op in VARIABLES else None


def updated_variable(norm, port: int, nodes: dict, readers: dict):
    """The variable that output `port` of a batch norm is assigned into, or None."""
    frontier, seen = [f"{norm.name}:{port}"], set()
    for _ in range(_MAX_DEPTH):
        following = []
        for ref in frontier:
            name = node_name(ref)
            for reader in readers.get(name, ()):
                refs = [r for r in reader.input if not is_control(r)]
                if not any(r == ref or (r == name and ref.endswith(":0")) for r in refs):
                    continue
                if reader.op in ASSIGNS and refs and refs[0] not in (ref, name):
                    return _variable(refs[0], nodes)
                if reader.name not in seen:
                    seen.add(reader.name)
                    following.append(f"{reader.name}:0")
        frontier = following
    return None


@register("training_batch_norm")
def training_batch_norm(graph_def, ctx: PassContext, log: PassLog):
    live = reachable(graph_def, ctx.outputs)
    training = [n for n in graph_def.node if n.op in NORM_OPS and n.attr["is_training"].b
                and n.name in live]
    if not training:
        return graph_def
    out = copy_graph(graph_def)
    nodes = {n.name: n for n in out.node}
    readers = consumers(out)
    taken = set(nodes)
    for norm in (nodes[n.name] for n in training):
        stats = [updated_variable(norm, port, nodes, readers) for port in (1, 2)]
        if None in stats:
            missing = "mean" if stats[0] is None else "variance"
            raise InputError(
                f"batch norm {norm.name} runs in training mode and no moving {missing} is "
                "updated from it, so it has no inference statistics; export the graph with "
                "is_training=False or pass --freeze-placeholder for its training flag")
        refs = []
        for variable in stats:
            if variable.op == "VarHandleOp":  # a resource variable is read explicitly
                read = out.node.add()
                read.name = unique_name(f"{norm.name}/{variable.name.split('/')[-1]}/read", taken)
                taken.add(read.name)
                read.op = "ReadVariableOp"
                read.input.append(variable.name)
                read.attr["dtype"].CopyFrom(variable.attr["dtype"])
                refs.append(read.name)
            else:
                refs.append(variable.name)
        norm.input[3], norm.input[4] = refs
        norm.attr["is_training"].b = False
        if "exponential_avg_factor" in norm.attr:
            norm.attr["exponential_avg_factor"].f = 1.0
        log.change("inference_mode", node=norm.name, mean=stats[0].name,
                   variance=stats[1].name)
    return out
