"""Loader for TF1 checkpoints: a `.meta` MetaGraph plus its `.index`/`.data-*` values."""
from __future__ import annotations

from pathlib import Path

from tfopt.errors import InputError, first_line
from tfopt.graph import plain_session
from tfopt.loaders import tf1
from tfopt.loaders.base import Description, Loaded, LoadOptions, signature_specs, variable_stats

FORMAT = "checkpoint"


def prefix_of(path: Path) -> Path:
    return path.with_suffix("") if path.suffix == ".meta" else path


def sniff(path: Path) -> bool:
    return (path.is_file() and path.suffix == ".meta") or \
        Path(f"{path}.meta").is_file()


def load(path: Path, options: LoadOptions) -> Loaded:
    import tensorflow as tf

    tf1.check_options(options)
    prefix = prefix_of(path)
    meta_file = Path(f"{prefix}.meta")
    if not Path(f"{prefix}.index").is_file():
        raise InputError(f"{prefix}.index is missing; copy the checkpoint's .index and "
                         f".data-* files next to {meta_file.name}")
    graph = tf.Graph()
    session = plain_session(graph)
    try:
        with graph.as_default():
            saver = tf.compat.v1.train.import_meta_graph(str(meta_file), clear_devices=True)
            if saver is None:
                raise InputError(f"{meta_file} holds no variables to restore; pass the "
                                 "frozen graph as a .pb instead")
            saver.restore(session, str(prefix))
    except InputError:
        session.close()
        raise
    except Exception as exc:  # DataLossError, NotFoundError, DecodeError, ...
        session.close()
        raise InputError(f"TensorFlow cannot restore {meta_file}: {first_line(exc)}; "
                         "check that the .meta and its .index/.data files belong together") \
            from exc
    outputs = [(tf1.Cut(tf1.tensor_ref(o)).name, tf1.tensor_ref(o))
               for o in options.outputs or []]
    loaded = tf1.Session(graph, session, graph.as_graph_def(), meta_file, FORMAT,
                         checkpoint=str(prefix))
    return tf1.freeze_session(loaded, None, outputs or None,
                              [tf1.parse_cut(c) for c in options.inputs or []],
                              options.freeze, options.signature)


def read_meta_graph(meta_file: Path):
    from google.protobuf import message
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    try:
        meta.ParseFromString(meta_file.read_bytes())
    except message.DecodeError as exc:
        raise InputError(f"{meta_file} is truncated or not a MetaGraph ({first_line(exc)}); "
                         "write it with tf.compat.v1.train.Saver") from exc
    return meta


def describe(path: Path, options: LoadOptions) -> Description:
    prefix = prefix_of(path)
    meta = read_meta_graph(Path(f"{prefix}.meta"))
    stats = variable_stats(str(prefix)) if Path(f"{prefix}.index").is_file() else \
        variable_stats(None)
    return Description(meta.graph_def, signature_specs(meta), stats)
