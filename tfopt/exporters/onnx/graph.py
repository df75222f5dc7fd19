"""The one helper every ONNX rewrite works over: producers, readers and constants of a
ModelProto's main graph, and node replacement that keeps the graph's order.

Written here rather than on onnx_graphsurgeon or onnx-ir: the rewrites need four lookups on
the ModelProto they are handed, not a second graph representation to convert to and back.
"""
from __future__ import annotations

import heapq
from typing import Any

import numpy as np


def opset(proto: Any) -> int:
    """The default-domain opset of a model (0 when it imports none)."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


class OnnxGraph:
    def __init__(self, proto: Any):
        self.proto = proto
        self.graph = proto.graph
        self.outputs = {o.name for o in self.graph.output}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.readers: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self._constants: dict[str, np.ndarray] | None = None

    @property
    def initializers(self) -> dict[str, Any]:
        return {i.name: i for i in self.graph.initializer}

    @property
    def constants(self) -> dict[str, np.ndarray]:
        """Initializers and Constant-node outputs, as numpy arrays."""
        if self._constants is None:
            from onnx import numpy_helper

            found = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
            found.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t)
                          for n in self.graph.node if n.op_type == "Constant" and n.attribute
                          and n.attribute[0].name == "value"})
            self._constants = found
        return self._constants

    def scalar(self, name: str, value: float) -> bool:
        """Whether a tensor is a constant holding one value close to `value`."""
        array = self.constants.get(name)
        return array is not None and array.size == 1 and bool(
            np.isclose(float(array.ravel()[0]), value))

    def only_reader(self, name: str, op_type: str) -> Any:
        """The single node reading a tensor, if it has that op type and the tensor is not a
        graph output; else None."""
        found = self.readers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type \
            and name not in self.outputs else None

    def replace(self, replaced: dict[int, Any], dropped: set[int]) -> None:
        """Swap nodes (keyed by id of the old node) in place and drop others; then drop the
        initializers nothing reads any more."""
        nodes = [replaced.get(id(n), n) for n in self.graph.node if id(n) not in dropped]
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self.drop_unused_initializers()

    def drop_unused_initializers(self) -> None:
        used = {i for n in self.graph.node for i in n.input}
        kept = [i for i in self.graph.initializer if i.name in used]
        if len(kept) != len(self.graph.initializer):
            del self.graph.initializer[:]
            self.graph.initializer.extend(kept)

    def remove_unread_nodes(self) -> int:
        """Drop the nodes none of whose outputs is read (here or inside a subgraph) or a
        graph output, until none is left, and the initializers they read; returns how many
        nodes went. The lookups are stale afterwards."""
        removed = 0
        while True:
            read = {i for n in self.graph.node for i in n.input} | self.outputs
            read |= {i for n in self.graph.node for i in _subgraph_reads(n)}
            dead = [n for n in self.graph.node if not any(o in read for o in n.output if o)]
            if not dead:
                break
            for node in dead:
                self.graph.node.remove(node)
            removed += len(dead)
        self.drop_unused_initializers()
        return removed


def _subgraph_reads(node: Any) -> set[str]:
    """Names a node's subgraphs (Loop/If/Scan bodies) read from the enclosing scope, at any
    depth (over-approximated by every name they read: extra edges only constrain order)."""
    names: set[str] = set()
    for attr in node.attribute:
        for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for inner in graph.node:
                names.update(inner.input)
                names |= _subgraph_reads(inner)
    return names


def sort_nodes(proto: Any) -> Any:
    """Put the main graph's nodes in topological order (Kahn), keeping the given order where
    it is already valid. onnx.checker requires the order; onnxruntime does not, so some
    producers (onnxruntime's fp16 converter) write graphs that only the checker refuses."""
    graph = proto.graph
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    needs = [{producer[name] for name in set(n.input) | _subgraph_reads(n)
              if name in producer and producer[name] != i} for i, n in enumerate(nodes)]
    readers: dict[int, list[int]] = {}
    for i, deps in enumerate(needs):
        for dep in deps:
            readers.setdefault(dep, []).append(i)
    pending = [len(d) for d in needs]

    ready = [i for i, count in enumerate(pending) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for reader in readers.get(i, ()):
            pending[reader] -= 1
            if pending[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) != len(nodes) or order == list(range(len(nodes))):
        return proto  # a cycle (left for the checker to name) or already sorted
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
    return proto
