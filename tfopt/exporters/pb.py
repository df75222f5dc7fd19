"""Frozen, optimized GraphDef (`model.pb`), run back with a TF1 session."""
from __future__ import annotations

from pathlib import Path

from tfopt.exporters.base import Exported, ExportOptions, python_callbacks
from tfopt.graph import op_histogram
from tfopt.model import Model

FORMAT = "pb"
FILENAME = "model.pb"
MODES = frozenset({"none"})
PREPARE: tuple[str, ...] = ()


def export(model: Model, path: Path, options: ExportOptions) -> Exported:
    path.write_bytes(model.graph_def.SerializeToString(deterministic=True))
    return Exported()


def unsupported_ops(model: Model, options: ExportOptions) -> list[str]:
    return python_callbacks(model)  # TensorFlow runs every other op it froze


def describe(path: Path, model: Model) -> dict[str, int]:
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    return op_histogram(graph_def)


def runner(path: Path, model: Model):
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    session = tf.compat.v1.Session(graph=graph)
    fetches = {t.name: t.tensor for t in model.outputs}

    def run(feed: dict) -> dict:
        return session.run(fetches, {f"{k}:0": v for k, v in feed.items()})
    return run
