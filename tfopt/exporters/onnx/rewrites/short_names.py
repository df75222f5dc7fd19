"""Quantized models only: every internal name becomes a short hexadecimal id and node
names are dropped (ONNX allows empty ones); graph inputs and outputs keep theirs.

A quantized ONNX writes each tensor name several times (the tensor, its scale and zero
point, each reader): on a small model the names outweigh the int8 weights (keras_cnn int8:
23.8 KB with names, 13.2 KB without). Written here because no optimizer shortens names.
"""
from __future__ import annotations

from typing import Any

from tfopt.exporters.onnx.rewrites.canonical_names import all_names, rename_graph
from tfopt.exporters.onnx.rewrites.registry import register_rewrite
from tfopt.passes.base import PassLog


@register_rewrite("short_names")
def short_names(proto: Any, log: PassLog) -> Any:
    graph = proto.graph
    kept = {v.name for v in list(graph.input) + list(graph.output)}
    node_names = {n.name for n in graph.node}  # dropped below, so not worth an id
    tensors = {t for n in graph.node for t in list(n.input) + list(n.output)}
    names = [n for n in dict.fromkeys(all_names(graph))
             if n and n not in kept and (n in tensors or n not in node_names)]
    rename: dict[str, str] = {}
    for name in names:
        short = format(len(rename), "x")
        while short in kept:
            short += "_"
        rename[name] = short
    before = proto.ByteSize()
    rename_graph(graph, rename)
    for node in graph.node:
        node.name = ""
    log.change("shortened", names=len(rename), bytes_saved=before - proto.ByteSize())
    return proto
