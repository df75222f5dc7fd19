"""Keep only what the signature's outputs need; classify everything dropped."""
from __future__ import annotations

from collections import Counter

from tfopt.categories import classify
from tfopt.graph import keep_nodes, reachable
from tfopt.passes.base import PassContext, PassLog, register


@register("prune")
def prune(graph_def, ctx: PassContext, log: PassLog):
    keep = reachable(graph_def, ctx.outputs) | set(ctx.inputs)
    dropped = Counter(classify(n) or "unreachable" for n in graph_def.node if n.name not in keep)
    for category, count in sorted(dropped.items()):
        log.change("removed", category=category, count=count)
    log.removed.update(dropped)
    return keep_nodes(graph_def, keep) if dropped else graph_def
