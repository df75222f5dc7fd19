"""Inference-only SavedModel (`saved_model/`): the frozen graph, no variables, same signature."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tfopt.exporters.base import Exported, ExportOptions, save_inference_model
from tfopt.model import Model

FORMAT = "saved_model"
FILENAME = "saved_model"


def export(model: Model, path: Path, options: ExportOptions) -> Exported:
    save_inference_model(model, path)
    return Exported()


def describe(path: Path, model: Model) -> dict[str, int]:
    """Ops the signature runs; the saver plumbing every SavedModel carries is left out."""
    from collections import Counter

    from tfopt.loaders.saved_model import read_proto, signature_closure

    meta = read_proto(path).meta_graphs[0]
    nodes, funcs = signature_closure(meta, model.signature)
    ops = Counter(n.op for n in meta.graph_def.node if n.name in nodes)
    for fdef in meta.graph_def.library.function:
        if fdef.signature.name in funcs:
            ops.update(n.op for n in fdef.node_def)
    return dict(sorted(ops.items()))


def runner(path: Path, model: Model):
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures[model.signature]

    def run(feed: dict) -> dict:
        return {k: np.asarray(v) for k, v in fn(**feed).items()}
    return run
