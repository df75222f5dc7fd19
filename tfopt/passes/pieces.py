"""Run Grappler over consecutive pieces of a large graph, cut where it folds nothing across.

Grappler's time per node grows with the graph, in TF's own code (0.02 s at 1k nodes, 0.2 s
at 10k, 3.9 s at 100k, one iteration), so past WHOLE_BELOW nodes it runs on pieces of about
PIECE_NODES. A cut goes only where every tensor crossing it is output 0 of an activation or
pooling op (`CUT_AFTER`, between blocks of a network) read through no control edge: nothing
Grappler folds spans such a point, so the pieces give the whole graph's result (tested
against it on real models). Constants, constant subgraphs and placeholders are copied into
each piece that reads them; a crossing tensor enters the next piece as a Placeholder named
like its producer, which stays a fetch of its own piece.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tfopt.graph import (
    BACK_EDGE_OPS,
    DT_FLOAT,
    empty_like,
    is_stateful,
    node_name,
    topological_order,
)
from tfopt.passes.base import PassLog
from tfopt.passes.fold_control_flow import MERGE, SWITCH

WHOLE_BELOW = 32768  # nodes; Grappler takes about 1.2 s there
PIECE_NODES = 2048  # non-portable nodes a piece, at least
# single-output ops whose output no Grappler optimizer folds into its readers
CUT_AFTER = frozenset({"Relu", "Relu6", "Elu", "Selu", "LeakyRelu", "Sigmoid", "Tanh",
                       "Softplus", "Softsign", "MaxPool", "AvgPool", "Softmax"})
# v1 loop frames and conds must be seen whole
FRAME_OPS = BACK_EDGE_OPS | SWITCH | MERGE | {"Enter", "RefEnter", "Exit", "RefExit", "LoopCond"}

Optimizer = Callable[[Any, list[str]], Any]  # (GraphDef, fetch) -> GraphDef


def optimize_in_pieces(graph_def, keep: list[str], optimize: Optimizer, log: PassLog, *,
                       whole_below: int = WHOLE_BELOW, piece_nodes: int = PIECE_NODES):
    """optimize(graph_def, keep), one piece of the topological order at a time."""
    nodes = graph_def.node
    if len(nodes) < whole_below:
        return optimize(graph_def, keep)
    whole = f"Grappler runs on all {len(nodes)} nodes at once"
    if graph_def.library.function:
        log.skip("pieces", f"{whole}: function calls need the whole graph")
        return optimize(graph_def, keep)
    position = {n.name: i for i, n in enumerate(nodes)}
    count = len(nodes)
    ops: list[str] = []
    sources: list[list[str]] = []
    constant = [False] * count
    portable = [False] * count  # copied into each piece that reads it
    blocking = [0] * (count + 1)  # +1 where a tensor no cut may cross starts, -1 where it ends
    for i, node in enumerate(nodes):  # one sweep: ops, inputs, constants, where cuts may go
        op, refs = node.op, list(node.input)
        names = [node_name(r) for r in refs]
        ops.append(op)
        sources.append(names)
        if op in FRAME_OPS:
            log.skip("pieces", f"{whole}: v1 control flow needs the whole graph")
            return optimize(graph_def, keep)
        producers = [position.get(name, count) for name in names]
        if any(j >= i for j in producers):
            if any(j == count for j in producers):
                log.skip("pieces", f"{whole}: an input names no node")
                return optimize(graph_def, keep)
            ordered = empty_like(graph_def)
            ordered.node.extend(topological_order(graph_def))
            return optimize_in_pieces(ordered, keep, optimize, log, whole_below=whole_below,
                                      piece_nodes=piece_nodes)
        constant[i] = (op == "Const" and not names) or (
            bool(names) and all(constant[j] for j in producers) and not is_stateful(op))
        portable[i] = constant[i] or op == "Placeholder"
        for ref, source, j in zip(refs, names, producers):
            crossable = ops[j] in CUT_AFTER and ref in (source, source + ":0")
            if not portable[j] and not crossable:  # control edges included
                blocking[j + 1] += 1  # no cut before j+1 .. i
                blocking[i + 1] -= 1
    home = [-1] * count  # the piece of a non-portable node
    pieces: list[list[int]] = [[]]
    open_blocks = 0
    for i in range(count):
        open_blocks += blocking[i]
        if portable[i]:
            continue
        if len(pieces[-1]) >= piece_nodes and open_blocks == 0:
            pieces.append([])
        pieces[-1].append(i)
        home[i] = len(pieces) - 1
    if len(pieces) == 1:
        log.skip("pieces", f"{whole}: no point to cut it at")
        return optimize(graph_def, keep)
    keep_set = set(keep)
    joined, joined_names = empty_like(graph_def), set()
    for p, chunk in enumerate(pieces):
        piece, fetch, included = empty_like(graph_def), list[str](), set()
        wanted = [i for i in range(count) if portable[i] and nodes[i].name in keep_set] \
            if p == 0 else []  # inputs, constant outputs
        piece.node.extend(nodes[i] for i in chunk)
        fetch.extend(nodes[i].name for i in chunk
                     if ops[i] in CUT_AFTER or nodes[i].name in keep_set)
        for i in chunk:
            for source in sources[i]:
                j = position[source]
                if portable[j]:
                    wanted.append(j)
                elif home[j] != p and j not in included:  # output 0 of a CUT_AFTER op
                    included.add(j)
                    stand_in = piece.node.add(name=source, op="Placeholder")
                    # (MaxPool's T may be left out as its default, float32)
                    stand_in.attr["dtype"].type = \
                        nodes[j].attr["T"].type if "T" in nodes[j].attr else DT_FLOAT
                    stand_in.attr["shape"].shape.unknown_rank = True  # Grappler wants it
        copied = []
        while wanted:  # portable nodes with their inputs
            j = wanted.pop()
            if j not in included:
                included.add(j)
                copied.append(nodes[j])
                wanted.extend(position[s] for s in sources[j])
        piece.node.extend(copied)
        fetch.extend(n.name for n in copied if n.name in keep_set)
        new = []
        for node in optimize(piece, fetch).node:
            if node.name in joined_names:  # a stand-in or a shared constant, unless Grappler
                if node.name in position and home[position[node.name]] == p:  # named it
                    log.skip("pieces", f"{whole}: Grappler named a new node {node.name}")
                    return optimize(graph_def, keep)
                continue
            joined_names.add(node.name)
            new.append(node)
        joined.node.extend(new)
    log.change("pieces", count=len(pieces), nodes=piece_nodes)
    return joined
