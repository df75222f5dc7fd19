"""A SavedModel's proto, read once per file version, and the part of its graph a signature
runs: shared by the loader and by the exporter that opens any producer's SavedModel."""
from __future__ import annotations

import functools
from pathlib import Path

from tfopt.errors import InputError, first_line
from tfopt.graph import node_name


@functools.lru_cache(maxsize=4)
def _parse(path: Path, mtime_ns: int):
    return _read_proto(path)


def read_proto(path: Path):
    """The SavedModel proto, parsed once per file version (sniffing and loading share it)."""
    file = path / "saved_model.pb"
    file = file if file.is_file() else path / "saved_model.pbtxt"
    return _parse(path, file.stat().st_mtime_ns)


def _read_proto(path: Path):
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    binary = path / "saved_model.pb"
    try:
        if binary.is_file():
            proto.ParseFromString(binary.read_bytes())
        else:
            text_format.Parse((path / "saved_model.pbtxt").read_text(), proto)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise InputError(f"{binary} is truncated or not a SavedModel ({first_line(exc)}); "
                         "re-export the model with tf.saved_model.save") from exc
    if not proto.meta_graphs:
        raise InputError(f"{binary} holds no MetaGraph; re-export the model with "
                         "tf.saved_model.save")
    return proto


def signature_closure(meta, signature: str) -> tuple[set[str], set[str]]:
    """Top-level node names and function names that the signature's outputs depend on."""
    graph = meta.graph_def
    by_name = {n.name: n for n in graph.node}
    functions = {f.signature.name: f for f in graph.library.function}
    roots = [node_name(t.name) for t in meta.signature_def[signature].outputs.values()]
    nodes: set[str] = set()
    funcs: set[str] = set()
    stack = [("node", r) for r in roots]
    while stack:
        kind, name = stack.pop()
        seen = nodes if kind == "node" else funcs
        if name in seen:
            continue
        seen.add(name)
        defs = [by_name[name]] if kind == "node" and name in by_name else \
            list(functions[name].node_def) if kind == "func" and name in functions else []
        for node in defs:
            if kind == "node":
                stack.extend(("node", node_name(r)) for r in node.input)
            for attr in node.attr.values():
                called = [attr.func.name] if attr.HasField("func") else \
                    [f.name for f in attr.list.func]
                stack.extend(("func", f) for f in called if f)
    return nodes, funcs


def split_by_signature(meta, signature: str) -> tuple[list, list]:
    """(NodeDefs the signature runs, every other NodeDef), functions' bodies included."""
    nodes, funcs = signature_closure(meta, signature)
    inside: list = []
    outside: list = []
    for node in meta.graph_def.node:
        (inside if node.name in nodes else outside).append(node)
    for fdef in meta.graph_def.library.function:
        (inside if fdef.signature.name in funcs else outside).extend(fdef.node_def)
    return inside, outside
