"""Fold control flow whose predicate is a constant to the branch actually taken.

    Switch(data, Const)            -> data on the taken port; the other port's readers die
    Merge(live, dead, ...)         -> live  (output 1, the value index, becomes a Const)
    If|StatelessIf(Const, args...) -> (Stateful)PartitionedCall of the taken branch

Deadness spreads as TensorFlow's executor spreads it: through data and control edges, and
stops at a Merge with a live input. Written here because Grappler folds a constant Switch
only inside its loop optimizer, never folds an If, and reports neither.
"""
from __future__ import annotations

from tfopt.graph import (
    BACK_EDGE_OPS,
    FORWARDING_OPS,
    add_const,
    const_value,
    empty_like,
    is_control,
    node_name,
    topological_order,
)
from tfopt.passes.base import PassContext, PassLog, register

SWITCH = frozenset({"Switch", "RefSwitch"})
MERGE = frozenset({"Merge", "RefMerge"})
IF = {"If": "StatefulPartitionedCall", "StatelessIf": "PartitionedCall"}


def tensor(ref: str) -> str:
    """'a' -> 'a:0', 'a:1' -> 'a:1': one spelling per tensor."""
    name = node_name(ref)
    return ref if ref != name else f"{name}:0"


def short(ref: str) -> str:
    return ref[:-2] if ref.endswith(":0") else ref


def constant_bool(ref: str, nodes: dict, alias: dict) -> bool | None:
    """The value of a boolean tensor that is a constant behind identities and negations."""
    negate = False
    for _ in range(len(nodes) + 1):
        ref = alias.get(tensor(ref), tensor(ref))
        node = nodes.get(node_name(ref))
        if node is None:
            return None
        if node.op == "Const":
            value = const_value(node)
            return None if value.size != 1 else bool(value.reshape(())) != negate
        if node.op not in FORWARDING_OPS and node.op != "LogicalNot":
            return None
        negate ^= node.op == "LogicalNot"
        ref = next(r for r in node.input if not is_control(r))
    return None


@register("fold_control_flow")
def fold_control_flow(graph_def, ctx: PassContext, log: PassLog):
    # deadness starts only at a Switch; without one or an If there is nothing to fold
    if not any(n.op in SWITCH or n.op in IF for n in graph_def.node):
        return graph_def
    nodes = {n.name: n for n in graph_def.node}
    alias: dict[str, str] = {}  # tensor -> the tensor that replaces it
    control_alias: dict[str, str] = {}  # removed Switch/Merge -> node to order after instead
    dead_tensors: set[str] = set()
    dead: set[str] = set()
    folded: set[str] = set()
    value_indices = []  # (Merge name, index) for Merges whose output 1 is read
    calls = {}  # If name -> (call op, branch function name)

    def is_dead(ref: str) -> bool:
        return node_name(ref) in dead or tensor(ref) in dead_tensors

    for node in topological_order(graph_def):
        data = [alias.get(tensor(r), tensor(r)) for r in node.input if not is_control(r)]
        controls = [node_name(r) for r in node.input if is_control(r)]
        if node.op in MERGE:
            forward = [r for r in data if nodes.get(node_name(r)) is None
                       or nodes[node_name(r)].op not in BACK_EDGE_OPS]
            live = [r for r in forward if not is_dead(r)]
            if not live:
                dead.add(node.name)
            elif len(live) == 1 and len(forward) == len(data) and len(data) > 1:
                alias[f"{node.name}:0"] = live[0]
                control_alias[node.name] = node_name(live[0])
                value_indices.append((node.name, data.index(live[0])))
                folded.add(node.name)
                log.change("folded", node=node.name, op=node.op, kept=short(live[0]))
            continue
        if any(is_dead(r) for r in data) or any(c in dead for c in controls):
            dead.add(node.name)
            continue
        if node.op in SWITCH:
            pred = constant_bool(data[1], nodes, alias)
            if pred is None:
                log.skip(node.name, f"predicate {short(data[1])} is not a constant")
                continue
            taken = int(pred)
            alias[f"{node.name}:{taken}"] = data[0]
            dead_tensors.add(f"{node.name}:{1 - taken}")
            control_alias[node.name] = node_name(data[0])
            folded.add(node.name)
            log.change("folded", node=node.name, op=node.op, branch=str(pred).lower())
        elif node.op in IF:
            pred = constant_bool(data[0], nodes, alias)
            if pred is None:
                log.skip(node.name, f"predicate {short(data[0])} is not a constant")
                continue
            branch = node.attr["then_branch" if pred else "else_branch"].func.name
            calls[node.name] = (IF[node.op], branch)
            log.change("folded", node=node.name, op=node.op, branch=branch)
    if not folded and not calls:
        return graph_def
    log.removed["control_flow"] += len(folded) + len(calls)
    log.removed["dead_branches"] += len(dead)

    out = empty_like(graph_def)
    for node in graph_def.node:
        if node.name in dead or node.name in folded:
            continue
        new = out.node.add()
        new.CopyFrom(node)
        data = [short(alias.get(tensor(r), tensor(r))) for r in node.input if not is_control(r)]
        controls = [control_alias.get(node_name(r), node_name(r)) for r in node.input
                    if is_control(r)]
        if node.name in calls:
            _to_call(new, *calls[node.name])
            data = data[1:]
        del new.input[:]
        new.input.extend(data + ["^" + c for c in dict.fromkeys(controls) if c != node.name])
    _add_value_indices(out, value_indices)
    return out


def _to_call(node, op: str, function: str) -> None:
    kept = {k: node.attr[k] for k in ("Tin", "Tout") if k in node.attr}
    node.op = op
    node.attr.clear()
    for key, value in kept.items():
        node.attr[key].CopyFrom(value)
    node.attr["f"].func.name = function
    for key in ("config", "config_proto", "executor_type"):
        node.attr[key].s = b""


def _add_value_indices(graph_def, merges: list[tuple[str, int]]) -> None:
    """Readers of a folded Merge's output 1 (which input was taken) read a Const instead."""
    import numpy as np

    read = {f"{m}:1": i for m, i in merges}
    wanted = {ref for n in graph_def.node for ref in n.input if ref in read}
    for ref in wanted:
        const = add_const(graph_def, ref.replace(":", "/value_index_"), np.int32(read[ref]))
        for node in graph_def.node:
            for i, r in enumerate(node.input):
                if r == ref:
                    node.input[i] = const.name
