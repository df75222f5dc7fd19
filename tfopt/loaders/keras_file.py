"""Loader for Keras 3 `.keras` and legacy `.h5` files, loaded in safe mode."""
from __future__ import annotations

import warnings
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from tfopt import compat
from tfopt.categories import is_augmentation_layer, is_optimizer_variable
from tfopt.errors import InputError, UsageError, first_line
from tfopt.loaders.archive import check_archive
from tfopt.loaders.base import (
    Description,
    Loaded,
    LoadOptions,
    call_signature,
    freeze_function,
    graph_stats,
)
from tfopt.model import SERVING_SIGNATURE
from tfopt.results import SourceInfo

FORMAT = "keras"
SUFFIXES = (".keras", ".h5", ".hdf5")
SIGNATURE = SERVING_SIGNATURE  # the one a Keras file is traced as


def sniff(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUFFIXES


def stored_weights(path: Path) -> list[tuple[str, int]]:
    """(dataset path, bytes) of every array the file stores, optimizer state included."""
    import h5py

    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found.append((name, obj.size * obj.dtype.itemsize))

    if path.suffix.lower() == ".keras":
        with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as raw, \
                h5py.File(raw, "r") as h5:
            h5.visititems(visit)
    else:
        with h5py.File(path, "r") as h5:
            h5.visititems(visit)
    return found


def load(path: Path, options: LoadOptions) -> Loaded:
    import keras
    import tensorflow as tf

    if options.graph_options:
        raise UsageError(f"{' and '.join(options.graph_options)} apply to TF1 graphs; {path} is "
                         "a Keras file, whose inputs and outputs are the model's")
    if options.signature != SIGNATURE:
        raise InputError(f"signature '{options.signature}' not found in {path}; a Keras file has "
                         f"one signature: {SIGNATURE}")
    if options.unsafe_keras:
        warnings.warn(f"--unsafe-keras: loading {path} runs the Python code it holds",
                      stacklevel=2)
    if path.suffix.lower() == ".keras":  # a zip: checked before any member is read
        check_archive(path, options.max_unpacked_bytes)
    try:
        weights = stored_weights(path)
        model = keras.saving.load_model(str(path), compile=False,
                                        safe_mode=not options.unsafe_keras)
    except Exception as exc:  # zipfile, h5py and keras raise many types for bad files
        if "safe_mode" in str(exc):
            raise InputError(f"{path} holds Python code (a Lambda layer or a custom object), "
                             "which tfopt does not run by default; if you trust the file, "
                             "pass --unsafe-keras") from exc
        raise InputError(f"cannot load Keras file {path}: {first_line(exc)}; re-save it with "
                         "model.save('model.keras')") from exc
    try:
        inputs = model.inputs
    except (AttributeError, ValueError) as exc:
        raise InputError(f"{path} holds a model without a known input signature; build it "
                         "with keras.Input(...) or save it as a SavedModel") from exc
    # a Sequential model has one output, named after its last layer
    out_names = list(getattr(model, "output_names", None) or [model.layers[-1].name])
    # call the model with the structure it declares; a dict's keys name the inputs
    structure: Any = getattr(model, "_inputs_struct", None)
    keyed = isinstance(structure, dict) and not any(
        isinstance(v, (dict, list, tuple)) for v in structure.values())
    names = sorted(structure) if keyed else [t.name for t in inputs]  # Keras' flat order
    specs = [tf.TensorSpec(t.shape, t.dtype, name=n) for n, t in zip(names, inputs)]

    @tf.function(input_signature=specs)
    def serve(*args):
        feed: Any
        if keyed:
            feed = dict(zip(names, args))
        elif structure is not None and not compat.nest().is_nested(structure):
            feed = args[0]
        elif structure is not None:
            feed = compat.nest().pack_sequence_as(structure, list(args))
        else:
            feed = list(args) if len(args) > 1 else args[0]
        outputs = model(feed, training=False)
        if isinstance(outputs, dict):
            return dict(outputs)
        return dict(zip(out_names, tf.nest.flatten(outputs)))

    fn = serve.get_concrete_function()
    frozen, _ = freeze_function(fn, SIGNATURE, options.large_weight_bytes)  # traced for inference
    frozen.meta["keepalive"] = model
    frozen.meta["traced_graph"] = fn.graph.as_graph_def()
    nodes, ops = graph_stats(fn.graph.as_graph_def())
    optimizer = [(n, b) for n, b in weights if is_optimizer_variable(n)]
    source = SourceInfo(
        path=str(path), format=FORMAT, signature=SIGNATURE, nodes=nodes, ops=ops,
        variables=len(weights), variable_bytes=sum(b for _, b in weights),
        optimizer_variables=len(optimizer),
        optimizer_variable_bytes=sum(b for _, b in optimizer))
    removed = Counter(optimizer=len(optimizer)) if optimizer else Counter()
    augmentation = sum(map(is_augmentation_layer, model._flatten_layers(include_self=False)))
    if augmentation:  # Keras skips them at training=False
        removed["augmentation"] = augmentation
    return Loaded(frozen, source, lambda feed: call_signature(fn, feed), removed)


def describe(path: Path, options: LoadOptions) -> Description:
    """Keras files store no graph: the traced serving function stands for it."""
    loaded = load(path, options)
    fn_graph = loaded.model.meta["traced_graph"]
    src = loaded.source
    return Description(fn_graph, {SIGNATURE: (loaded.model.inputs, loaded.model.outputs)},
                       {k: getattr(src, k) for k in ("variables", "variable_bytes",
                                                     "optimizer_variables",
                                                     "optimizer_variable_bytes")})
