"""Remove training-only and debug ops that the outputs reach only through control edges.

Debug ops (Assert, CheckNumerics, Print*, StringFormat), every summary op, variable
updates (Assign*, *Apply*) and save/restore ops. Written here because Grappler's
debug_stripper keeps summaries and updates and reports nothing per node.
"""
from __future__ import annotations

from tfopt.categories import (
    DEBUG_OPS,
    DEBUG_PASSTHROUGH_OPS,
    SAVE_RESTORE_OPS,
    is_summary_op,
    is_update_op,
)
from tfopt.graph import bypass_nodes, consumers, is_control, node_name
from tfopt.passes.base import PassContext, PassLog, register


def _category(node) -> str | None:
    if node.op in DEBUG_OPS:
        return "debug"
    if is_summary_op(node.op):
        return "summaries"
    if is_update_op(node.op):
        return "optimizer"
    if node.op in SAVE_RESTORE_OPS:
        return "save_restore"
    return None


@register("strip_training")
def strip_training(graph_def, ctx: PassContext, log: PassLog):
    candidates = {n.name: n for n in graph_def.node
                  if _category(n) and n.name not in ctx.protected}
    if not candidates:
        return graph_def
    readers = consumers(graph_def)
    # a sink stays while a node we keep reads its data; iterate to a fixpoint
    sinks = {name for name, n in candidates.items() if n.op not in DEBUG_PASSTHROUGH_OPS}
    changed = True
    while changed:
        changed = False
        for name in sorted(sinks):
            blocker = next((r.name for r in readers.get(name, ())
                            if r.name not in sinks and any(
                                not is_control(ref) and node_name(ref) == name
                                for ref in r.input)), None)
            if blocker is not None:
                sinks.discard(name)
                log.skip(name, f"its output feeds {blocker}, which is kept")
                changed = True
    removed = {}
    for name, node in candidates.items():
        if node.op in DEBUG_PASSTHROUGH_OPS:
            removed[name] = node.input[0]
        elif name in sinks:
            removed[name] = None
        else:
            continue
        log.change("removed", node=name, op=node.op)
        log.removed[_category(node)] += 1
    return bypass_nodes(graph_def, removed) if removed else graph_def
