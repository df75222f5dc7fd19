"""Same model, same bytes: put the nodes in a canonical topological order and rename what
tf2onnx names from a process-wide counter (`Unsqueeze__55`, `const_axes__89`), whose values
differ from run to run, to `<op or const>__<position>`.

The order breaks ties by a structural key of each node (its op, attributes and the keys of
what it reads, down to the graph inputs and initializer bytes), so it depends only on what
the graph computes. Written here because neither tf2onnx nor the ONNX optimizers promise
deterministic output (tf2onnx's own names and node counts vary between runs).
"""
from __future__ import annotations

import hashlib
import heapq
import re
from typing import Any

from tfopt.exporters.onnx.rewrites.registry import register_rewrite
from tfopt.passes.base import PassLog

GENERATED = re.compile(r"__\d+")


def _digest(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def _attribute_key(attr: Any) -> str:
    """An attribute without the names inside its subgraphs (those are renamed too)."""
    if attr.HasField("g") or len(attr.graphs):
        graphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        return _digest(attr.name, *("|".join(n.op_type for n in g.node) for g in graphs))
    return _digest(attr.SerializeToString(deterministic=True))


def canonical_order(graph: Any) -> list[int]:
    """Node indices in topological order, ties broken by structural key."""
    keys: dict[str, str] = {i.name: "input:" + i.name for i in graph.input}
    for init in graph.initializer:  # its content without its name, and not copied
        name, init.name = init.name, ""
        keys[name] = _digest("init", init.SerializeToString(deterministic=True))
        init.name = name
    keys[""] = "none"
    nodes = list(graph.node)
    producers = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waiting = [sum(1 for name in set(n.input) if name in producers) for n in nodes]
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in set(node.input):
            if name in producers:
                readers.setdefault(producers[name], []).append(i)

    def key(i: int) -> str:
        node = nodes[i]
        return _digest(node.op_type, node.domain, *(keys.get(name, "outer:" + name)
                                                     for name in node.input),
                       *sorted(_attribute_key(a) for a in node.attribute))

    ready = [(key(i), i) for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        node_key, i = heapq.heappop(ready)
        order.append(i)
        for slot, name in enumerate(nodes[i].output):
            keys[name] = f"{node_key}:{slot}"
        for reader in readers.get(i, ()):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, (key(reader), reader))
    return order if len(order) == len(nodes) else list(range(len(nodes)))


def rename_graph(graph: Any, rename: dict[str, str]) -> None:
    for node in graph.node:
        node.name = rename.get(node.name, node.name)
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                rename_graph(sub, rename)
    for value in list(graph.initializer) + list(graph.value_info) + list(graph.input) \
            + list(graph.output):
        value.name = rename.get(value.name, value.name)


def all_names(graph: Any) -> list[str]:
    """Every node and tensor name in order of appearance, subgraphs included."""
    found = [i.name for i in graph.input] + [i.name for i in graph.initializer]
    for node in graph.node:
        found += [node.name, *node.input, *node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found += all_names(sub)
    return found


@register_rewrite("canonical_names")
def canonical_names(proto: Any, log: PassLog) -> Any:
    graph = proto.graph
    order = canonical_order(graph)
    nodes = [graph.node[i] for i in order]
    reordered = order != sorted(order)
    if reordered:
        copies = [type(n)() for n in nodes]
        for copy, node in zip(copies, nodes):
            copy.CopyFrom(node)
        del graph.node[:]
        graph.node.extend(copies)
    kept = {v.name for v in list(graph.input) + list(graph.output)}
    weights = {i.name for i in graph.initializer} - kept
    names = list(dict.fromkeys(all_names(graph)))
    fixed = {n for n in names if n in kept or (n not in weights and not GENERATED.search(n))}
    # the new base comes from the structure too: which name survives when two equal
    # constants merge differs from run to run
    base = {}
    for node in graph.node:
        base[node.name] = node.op_type
        base.update({o: node.op_type.lower() for o in node.output})
    rename: dict[str, str] = {}
    for name in names:
        if name in fixed or name in weights:
            continue
        candidate = f"{base.get(name, 'value')}__{len(rename)}"
        while candidate in fixed:
            candidate += "_"
        rename[name] = candidate
    # a weight is named after its first reader: "<node>:<input slot>"
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in weights and name not in rename:
                candidate = f"{rename.get(node.name, node.name)}:{slot}"
                while candidate in fixed:
                    candidate += "_"
                rename[name] = candidate
    for index, name in enumerate(sorted(weights - set(rename))):
        rename[name] = f"unread__{index}"
    if any(old != new for old, new in rename.items()):
        # two passes: a new name may be an old one of another tensor
        temporary = {old: f"\0{i}" for i, old in enumerate(rename)}
        rename_graph(graph, temporary)
        rename_graph(graph, {temporary[old]: new for old, new in rename.items()})
    for field in (graph.initializer, graph.value_info):
        field.sort(key=lambda value: value.name)  # no copy of ours (upb's sort rebuilds
        # the field: one transient copy of the weights, BERT-base --to onnx's peak)
    log.change("canonical", nodes_reordered=reordered,
               names_renumbered=sum(1 for old, new in rename.items() if old != new))
    return proto
