"""Declarative op-type patterns and the driver that rewrites their matches, after TF's Graph
Transform Tool (OpTypePattern, ReplaceMatchingOpTypes in transform_utils.h).

    OpTypePattern("Mul", [OpTypePattern("Conv2D|MatMul", [OpTypePattern("*"), CONST]), CONST])

matches a Mul whose first input is a Conv2D or MatMul with a constant second input and
whose second input is a constant. Commutative ops also match with their inputs swapped.

`replace_matching` visits the graph in topological order, hands each match to a callback
that returns a `Replacement` or a `Skip(reason)`, applies replacements at once (so that a
later match sees the rewritten graph: chains fold step by step), prunes what no output
reads, and logs every change and every skip. Unlike the GTT, no match is skipped silently.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tfopt.graph import (
    bypass_nodes,
    consumers,
    copy_graph,
    is_control,
    keep_nodes,
    node_name,
    reachable,
    topological_order,
)
from tfopt.passes.base import PassLog

COMMUTATIVE = frozenset({"Mul", "Add", "AddV2"})


@dataclass(frozen=True)
class OpTypePattern:
    op: str  # "A|B" alternatives, "*" for anything
    inputs: Sequence[OpTypePattern] = field(default_factory=tuple)
    name: str | None = None  # key under which the matched node is returned

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))

    def accepts(self, op: str) -> bool:
        return self.op == "*" or op in self.op.split("|")


CONST = OpTypePattern("Const")
ANY = OpTypePattern("*")


def variants(op: str, *inputs: Sequence[OpTypePattern], name: str | None = None
             ) -> list[OpTypePattern]:
    """One pattern per combination of alternative input patterns: several graph shapes of
    one idea, written once (as tf2onnx's rewriters list theirs)."""
    return [OpTypePattern(op, list(combo), name) for combo in itertools.product(*inputs)]


def data_inputs(node: Any) -> list[str]:
    return [ref for ref in node.input if not is_control(ref)]


def match(pattern: OpTypePattern, node: Any, nodes: Mapping[str, Any]) -> dict | None:
    """The named nodes of a match, keyed by pattern name, or None."""
    found: dict = {}
    return found if _match(pattern, node, nodes, found) else None


def _match(pattern: OpTypePattern, node: Any, nodes: Mapping[str, Any], found: dict) -> bool:
    if node is None or not pattern.accepts(node.op):
        return False
    if pattern.name:
        found[pattern.name] = node
    if not pattern.inputs:
        return True
    refs = data_inputs(node)
    if len(refs) < len(pattern.inputs):
        return False
    orders = [refs[:len(pattern.inputs)]]
    if node.op in COMMUTATIVE and len(pattern.inputs) == 2:
        orders.append(orders[0][::-1])
    for order in orders:
        trial = dict(found)
        if all(_match(p, nodes.get(node_name(r)), nodes, trial)
               for p, r in zip(pattern.inputs, order)):
            found.clear()
            found.update(trial)
            return True
    return False


def can_match(pattern: OpTypePattern, ops: set[str]) -> bool:
    """Whether every op the pattern names is among the graph's ops."""
    return (pattern.op == "*" or any(op in ops for op in pattern.op.split("|"))) and all(
        can_match(p, ops) for p in pattern.inputs)


@dataclass(frozen=True)
class Skip:
    """A match the callback declines, and why (it lands in the pass's report)."""

    reason: str


@dataclass
class Replacement:
    """What a match becomes.

    nodes: new NodeDefs; one named like an existing node replaces it (keeping the name,
        its readers need no change), the others are added.
    dead: matched nodes that nothing reads once the new nodes are in (they no longer count
        as readers for later matches, and are pruned).
    bypass: node -> the ref its readers read instead; the node is then removed.
    details: the change-log entry (node, pattern, ...).
    removed: category -> count, added to the pass's `removed` counts.
    """

    nodes: list = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    bypass: dict[str, str] = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)


class GraphView:
    """The working copy a driver rewrites: nodes by name and readers, kept current."""

    def __init__(self, graph_def: Any):
        self.graph_def = graph_def
        self.nodes = {n.name: n for n in graph_def.node}
        self.readers = consumers(graph_def)

    def put(self, node: Any) -> None:
        """Add a node, or overwrite the node of its name; `node` is the callback's own
        NodeDef, never one of the view's (their readers are tracked by their inputs)."""
        old = self.nodes.get(node.name)
        if old is not None and old is node:
            raise ValueError(f"a rewrite returned the graph's own node {node.name}; return "
                             "a modified copy")
        if old is None:
            old = self.graph_def.node.add()
        else:
            self._forget_reads(old)
        old.CopyFrom(node)
        self.nodes[old.name] = old
        for ref in old.input:
            self.readers[node_name(ref)].append(old)

    def drop(self, name: str) -> None:
        """Forget a node that nothing reads any more (pruning removes it from the graph)."""
        self._forget_reads(self.nodes.pop(name))

    def _forget_reads(self, old: Any) -> None:
        for ref in old.input:
            self.readers[node_name(ref)] = [r for r in self.readers[node_name(ref)]
                                            if r is not old]


Callback = Callable[[dict, GraphView], "Replacement | Skip"]


def replace_matching(graph_def: Any, patterns: Iterable[OpTypePattern], rewrite: Callback,
                     log: PassLog, *, keep: Iterable[str], action: str = "folded",
                     removed: str | None = "folded_constants",
                     within: set[str] | None = None) -> Any:
    """Rewrite every match of the first matching pattern, in topological order.

    keep: the signature's node names, which pruning must keep; removed: the category that
    counts the nodes that replacements leave unread (None: not counted); within: only nodes
    in this set are matched (e.g. the inference path). Returns graph_def itself when nothing
    changed.
    """
    present = {n.op for n in graph_def.node}
    patterns = tuple(patterns)
    if not any(can_match(p, present) for p in patterns):
        return graph_def  # nothing can change; once one matches, a rewrite may add ops
    roots = None if any(p.op == "*" for p in patterns) else \
        frozenset(op for p in patterns for op in p.op.split("|"))
    keep = set(keep)
    out = copy_graph(graph_def)
    view = GraphView(out)
    bypass: dict[str, str] = {}
    changed = False
    for name in [n.name for n in topological_order(out)]:
        node = view.nodes.get(name)
        if node is None or name in bypass or (within is not None and name not in within) \
                or (roots is not None and node.op not in roots):
            continue
        found = next((m for m in (match(p, node, view.nodes) for p in patterns) if m), None)
        if found is None:
            continue
        result = rewrite(found, view)
        if isinstance(result, Skip):
            log.skip(name, result.reason)
            continue
        if not isinstance(result, Replacement):
            raise TypeError(f"a rewrite callback returned {result!r}, not Replacement or Skip")
        for new in result.nodes:
            view.put(new)
        for dead in result.dead:
            view.drop(dead)
        bypass.update(result.bypass)
        for category, count in result.removed.items():
            log.removed[category] += count
        log.change(action, **(result.details or {"node": name}))
        changed = True
    if not changed:
        return graph_def
    if bypass:
        out = bypass_nodes(out, dict(bypass))
    live = reachable(out, keep) | keep
    if removed is not None:
        log.removed[removed] += sum(1 for n in graph_def.node if n.name not in live)
    return keep_nodes(out, live)

