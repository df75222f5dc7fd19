"""Drop the scope prefix that every internal name shares (TF's `StatefulPartitionedCall/
model/`): quantization writes each name three times per edge, and on small models the
names outweigh the int8 weights. Graph input and output names are kept."""
from __future__ import annotations

import os
from typing import Any

from tfopt.exporters.onnx.rewrites.registry import register_rewrite
from tfopt.passes.base import PassLog


@register_rewrite("compact_names")
def compact_names(proto: Any, log: PassLog) -> Any:
    graph = proto.graph
    kept = {v.name for v in list(graph.input) + list(graph.output)}
    names = [n.name for n in graph.node] + [t for n in graph.node for t in
                                           list(n.input) + list(n.output)]
    names += [i.name for i in graph.initializer]
    scoped = [n for n in names if "/" in n and n not in kept]  # "x_scale" has no scope
    prefix = os.path.commonprefix(scoped) if scoped else ""
    prefix = prefix[:prefix.rfind("/") + 1]
    if not prefix:
        log.skip("*", "the internal names share no scope prefix")
        return proto

    def short(name: str) -> str:
        return name[len(prefix):] if name.startswith(prefix) and name not in kept else name

    if len({short(n) for n in names}) != len(set(names)):
        log.skip("*", f"dropping '{prefix}' would make two names equal")
        return proto
    for node in graph.node:
        node.name = short(node.name)
        node.input[:] = [short(t) for t in node.input]
        node.output[:] = [short(t) for t in node.output]
    for tensor in list(graph.initializer) + list(graph.value_info):
        tensor.name = short(tensor.name)
    log.change("renamed", prefix=prefix, names=len({n for n in names if n.startswith(prefix)}))
    return proto
