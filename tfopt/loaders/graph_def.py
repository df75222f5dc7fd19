"""Loader for GraphDefs: a frozen `.pb` (binary) or `.pbtxt` (text)."""
from __future__ import annotations

from pathlib import Path

from tfopt.errors import InputError, first_line
from tfopt.graph import node_name, plain_session, reachable
from tfopt.loaders import tf1
from tfopt.loaders.base import (
    Description,
    Loaded,
    LoadOptions,
    check_graph_size,
    variable_stats,
)

FORMAT = "graph_def"
SUFFIXES = (".pb", ".pbtxt", ".graphdef")


def sniff(path: Path) -> bool:
    return path.is_file() and path.suffix in SUFFIXES


def read(path: Path):
    from google.protobuf import message, text_format
    from tensorflow.core.framework import graph_pb2

    if path.name in ("saved_model.pb", "saved_model.pbtxt"):
        raise InputError(f"{path} is part of a SavedModel; pass its directory, {path.parent}")
    graph_def = graph_pb2.GraphDef()
    try:
        if path.suffix == ".pbtxt":
            text_format.Parse(path.read_text(), graph_def)
        else:
            graph_def.ParseFromString(path.read_bytes())
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is truncated or not a GraphDef ({first_line(exc)}); write it "
                         "with tf.io.write_graph") from exc
    if not graph_def.node:
        raise InputError(f"{path} holds no nodes; write the graph with tf.io.write_graph")
    return graph_def


def load(path: Path, options: LoadOptions) -> Loaded:
    import tensorflow as tf

    tf1.check_options(options)
    graph_def = read(path)
    roots = [node_name(tf1.tensor_ref(o)) for o in options.outputs or []]
    kept = reachable(graph_def, roots) if roots else None
    check_graph_size(graph_def, options, str(path),  # before TensorFlow imports it
                     None if kept is None else [n for n in graph_def.node if n.name in kept])
    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
    except Exception as exc:  # ValueError, InvalidArgumentError, NotFoundError (unknown op)
        raise InputError(f"TensorFlow cannot import {path}: {first_line(exc)}") from exc
    outputs = [(tf1.Cut(tf1.tensor_ref(o)).name, tf1.tensor_ref(o))
               for o in options.outputs or []]
    loaded = tf1.Session(graph, plain_session(graph), graph.as_graph_def(), path,
                         FORMAT)
    return tf1.freeze_session(loaded, None, outputs or None,
                              [tf1.parse_cut(c) for c in options.inputs or []],
                              options.freeze, options.signature,
                              values_hint="a GraphDef holds no variable values: pass the "
                              "checkpoint's .meta file (with its .index/.data files) instead")


def describe(path: Path, options: LoadOptions) -> Description:
    return Description(read(path), {}, variable_stats(None))
