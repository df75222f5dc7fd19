"""Loader for TF1 SavedModels (tf.compat.v1.saved_model.Builder), training graph included."""
from __future__ import annotations

from pathlib import Path

from tfopt.errors import InputError, first_line
from tfopt.graph import plain_session
from tfopt.loaders import saved_model, tf1
from tfopt.loaders.base import Description, Loaded, LoadOptions
from tfopt.saved_models import read_proto

FORMAT = "saved_model_v1"


def sniff(path: Path) -> bool:
    return saved_model.is_saved_model(path) and saved_model.is_tf1(read_proto(path))


def load(path: Path, options: LoadOptions) -> Loaded:
    import tensorflow as tf

    tf1.check_options(options)
    proto = read_proto(path)
    meta = saved_model.pick_meta_graph(proto, options.tags, path)
    tags = list(meta.meta_info_def.tags)
    if not options.outputs:
        saved_model.check_signature(meta, options.signature, path)
    graph = tf.Graph()
    session = plain_session(graph)
    try:
        with graph.as_default():
            tf.compat.v1.saved_model.loader.load(session, tags, str(path))
    except Exception as exc:  # TF raises many types for unloadable models
        session.close()
        raise InputError(f"TensorFlow cannot load {path}: {first_line(exc)}") from exc
    inputs = outputs = None
    if options.signature in meta.signature_def:
        signature = meta.signature_def[options.signature]
        inputs = sorted((k, v.name) for k, v in signature.inputs.items())
        outputs = sorted((k, v.name) for k, v in signature.outputs.items())
    if options.outputs:
        outputs = [(tf1.Cut(tf1.tensor_ref(o)).name, tf1.tensor_ref(o)) for o in options.outputs]
    loaded = tf1.Session(graph, session, graph.as_graph_def(), path, FORMAT,
                         checkpoint=str(path / "variables" / "variables")
                         if (path / "variables" / "variables.index").is_file() else None)
    return tf1.freeze_session(loaded, inputs, outputs,
                              [tf1.parse_cut(c) for c in options.inputs or []],
                              options.freeze, options.signature)


def describe(path: Path, options: LoadOptions) -> Description:
    return saved_model.describe(path, options)
