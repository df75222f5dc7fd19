"""Make dropout left in the inference path an identity.

    SelectV2(mask, Mul(x, 1/keep), 0) | Mul(Mul(x, 1/keep), mask) | Mul(RealDiv(x, keep), mask)
      with mask = GreaterEqual|Floor|Cast|...(RandomUniform)          -> x

Inverted dropout scales at training time, so at inference the layer is exactly x. Written
here because Grappler keeps random ops (they are stateful) and no converter drops them.
"""
from __future__ import annotations

from tfopt.graph import bypass_nodes, const_value, keep_nodes, node_name, reachable
from tfopt.passes.base import PassContext, PassLog, register
from tfopt.passes.pattern import OpTypePattern, data_inputs, match

RANDOM = frozenset({"RandomUniform", "StatelessRandomUniform", "StatelessRandomUniformV2"})
_MASK_STEPS = frozenset({"GreaterEqual", "Greater", "Less", "LessEqual", "Cast", "Floor", "Add",
                         "AddV2", "Mul", "RealDiv", "Identity"})
_MASK_DEPTH = 6

# the masking node; _split tells which operand is the random mask
PATTERN = OpTypePattern("SelectV2|Select|Mul")


def _is_random_mask(node, nodes: dict) -> bool:
    """Whether a node is a mask computed from a random draw by a few elementwise steps."""
    frontier = [node] if node is not None else []
    for _ in range(_MASK_DEPTH):
        following = []
        for current in frontier:
            if current.op in RANDOM:
                return True
            if current.op in _MASK_STEPS:
                following.extend(n for n in (nodes.get(node_name(r)) for r in data_inputs(current))
                                 if n is not None)
        frontier = following
    return False


def _scalar_const(node) -> bool:
    return node is not None and node.op == "Const" and const_value(node).size == 1


def _unscaled(ref: str, nodes: dict) -> str:
    """x for x*c or x/c with a scalar constant c (the inverted-dropout scale), else ref."""
    scaled = nodes.get(node_name(ref))
    if scaled is not None and scaled.op in ("Mul", "RealDiv"):
        refs = data_inputs(scaled)
        consts = [i for i, r in enumerate(refs) if _scalar_const(nodes.get(node_name(r)))]
        if scaled.op == "RealDiv" and consts == [1]:
            return refs[0]
        if scaled.op == "Mul" and len(consts) == 1:
            return refs[1 - consts[0]]
    return ref


def _split(node, nodes: dict) -> tuple[str, str] | None:
    """(mask ref, data ref) of a dropout's masking node, or None."""
    refs = data_inputs(node)
    if node.op in ("SelectV2", "Select"):
        zero = nodes.get(node_name(refs[2]))
        if zero is None or zero.op != "Const" or const_value(zero).any():
            return None
        pairs = [(refs[0], refs[1])]
    else:
        pairs = [(refs[1], refs[0]), (refs[0], refs[1])]
    for mask, data in pairs:
        source = nodes.get(node_name(data))
        if source is None or source.op == "Const":  # a random initializer, not a layer
            continue
        if _is_random_mask(nodes.get(node_name(mask)), nodes) \
                and not _is_random_mask(source, nodes):
            return mask, data
    return None


@register("remove_dropout")
def remove_dropout(graph_def, ctx: PassContext, log: PassLog):
    nodes = {n.name: n for n in graph_def.node}
    live = reachable(graph_def, ctx.outputs)  # the inference path; gradients also mask
    replaced = {}
    for node in graph_def.node:
        if node.name in ctx.protected or node.name not in live \
                or match(PATTERN, node, nodes) is None:
            continue
        split = _split(node, nodes)
        if split is not None:
            replaced[node.name] = _unscaled(split[1], nodes)
            log.change("identity", node=node.name, input=replaced[node.name])
    if not replaced:
        return graph_def
    log.removed["dropout"] += len(replaced)
    out = bypass_nodes(graph_def, replaced)
    return keep_nodes(out, reachable(out, ctx.outputs) | set(ctx.inputs))
