"""Loader for TF2 SavedModels (tf.saved_model.save, keras Model.export, tf.Module)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from tfopt.categories import SAVE_RESTORE_OPS
from tfopt.errors import InputError, UsageError, first_line
from tfopt.loaders.base import (
    Description,
    Loaded,
    LoadOptions,
    call_signature,
    freeze_function,
    graph_stats,
    rewritten_reference,
    signature_specs,
    variable_stats,
)
from tfopt.loaders.weights import load_saved_model
from tfopt.results import SourceInfo
from tfopt.saved_models import read_proto, split_by_signature

FORMAT = "saved_model"


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file()
                                 for f in ("saved_model.pb", "saved_model.pbtxt"))


def is_tf1(proto) -> bool:
    """Written by TF1's SavedModelBuilder: no object graph, so tf.saved_model.load would only
    wrap its signatures and keep the training graph's control flow."""
    return not any(m.object_graph_def.nodes for m in proto.meta_graphs)


def sniff(path: Path) -> bool:
    return is_saved_model(path) and not is_tf1(read_proto(path))


def pick_meta_graph(proto, tags: list[str] | None, path: Path):
    available = [sorted(m.meta_info_def.tags) for m in proto.meta_graphs]
    if tags is None:
        serve = [m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags]
        return (serve or list(proto.meta_graphs))[0]
    for meta in proto.meta_graphs:
        if set(meta.meta_info_def.tags) == set(tags):
            return meta
    listed = "; ".join(",".join(t) for t in available)
    raise InputError(f"tag set '{','.join(tags)}' not found in {path}; available: {listed} "
                     "(pass one with --tag)")


def check_signature(meta, signature: str, path: Path) -> None:
    names = [k for k in meta.signature_def if not k.startswith("__")]
    if signature not in names:
        raise InputError(f"signature '{signature}' not found in {path}; available: "
                         f"{', '.join(sorted(names)) or 'none'} (pass one with --signature)")


def variables_prefix(path: Path, meta) -> str | None:
    """The checkpoint prefix of the SavedModel's variables; None when it has none."""
    import tensorflow as tf

    prefix = path / "variables" / "variables"
    needs_variables = any(n.WhichOneof("kind") == "variable" for n in meta.object_graph_def.nodes) \
        or bool(meta.saver_def.filename_tensor_name)
    if not Path(f"{prefix}.index").is_file():
        if needs_variables:
            raise InputError(f"{path} is missing variables/variables.index; copy the whole "
                             "SavedModel directory, variables/ included")
        return None
    try:
        tf.train.load_checkpoint(str(prefix))
    except Exception as exc:  # TF raises DataLossError, NotFoundError or others here
        raise InputError(f"variables/ in {path} is corrupt ({first_line(exc)}); re-export "
                         "the SavedModel") from exc
    return str(prefix)


def removed_outside_signature(meta, signature: str) -> Counter:
    """Nodes of the SavedModel that the frozen signature leaves behind."""
    _, outside = split_by_signature(meta, signature)
    return Counter("save_restore" if n.op in SAVE_RESTORE_OPS else "unreachable" for n in outside)


def load(path: Path, options: LoadOptions) -> Loaded:
    if options.graph_options:
        raise UsageError(f"{' and '.join(options.graph_options)} apply to TF1 graphs; {path} is "
                         "a TF2 SavedModel, so choose what to export with --signature")
    proto = read_proto(path)
    meta = pick_meta_graph(proto, options.tags, path)
    check_signature(meta, options.signature, path)
    prefix = variables_prefix(path, meta)
    stats = variable_stats(prefix)
    tags = list(meta.meta_info_def.tags)
    try:
        obj, fn = load_saved_model(str(path), tags, options.signature, prefix)
    except Exception as exc:  # TF raises many types for unloadable models
        raise InputError(f"TensorFlow cannot load {path}: {first_line(exc)}") from exc
    model, reports = freeze_function(fn, options.signature, options.large_weight_bytes)
    model.meta["keepalive"] = obj  # the reference function needs its variables alive
    reference, what = rewritten_reference(model, reports, lambda feed: call_signature(fn, feed))

    nodes, ops = graph_stats(meta.graph_def)
    source = SourceInfo(path=str(path), format=FORMAT, signature=options.signature, nodes=nodes,
                        ops=ops, reference=what, **stats)
    removed = removed_outside_signature(meta, options.signature)
    removed["optimizer"] += stats["optimizer_variables"]
    for report in reports:
        removed.update(report.removed)
    return Loaded(model, source, reference, removed, reports)


def describe(path: Path, options: LoadOptions) -> Description:
    meta = pick_meta_graph(read_proto(path), options.tags, path)
    return Description(meta.graph_def, signature_specs(meta),
                       variable_stats(variables_prefix(path, meta)))
