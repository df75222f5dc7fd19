"""What exporters share: the Exporter protocol, the export options and result, and the
frozen graph as a named TF function."""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tfopt.errors import InputError
from tfopt.graph import rename_functions
from tfopt.model import Model, TensorSpec

_CALLS = itertools.count()




@dataclass
class ExportOptions:
    opset: int | None = None
    quantize: str = "none"  # a name in modes.MODES
    calibration: list[dict] | None = None  # feed dicts, for calibrated modes (and fp16 ONNX)
    int8_io: bool = False  # TFLite int8: integer inputs and outputs too
    float_layers: tuple[str, ...] = ()  # nodes kept in float by a quantized export


@dataclass
class Exported:
    precision: str = "fp32"
    fallback: str | None = None  # the converter fallback that succeeded, if any
    attempts: list[dict] = field(default_factory=list)  # every try, with its error
    steps: list[dict] = field(default_factory=list)  # post-optimizations, nodes after each
    recurrent: list[dict] = field(default_factory=list)  # per recurrent layer: how converted
    batch_limit: str | None = None  # why the artifact takes batch 1 only; None: any batch
    shape_limit: str | None = None  # why it takes the verification shape only; None: any
    note: str | None = None  # how it differs from the original's compute, if it does


@dataclass
class Opened:
    """An artifact opened in its runtime as it is, whoever made it: its own input and output
    names and shapes, and a run over feeds keyed by its input names (tfopt compare)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]  # shapes may be unknown (None) until it runs
    run: Callable[[dict], dict]
    signature: str | None = None  # the signature it was opened through, if it has several


def pick_signature(path: Path, available: list[str], wanted: str) -> str:
    """The signature named `wanted`, or the artifact's only one."""
    if wanted in available:
        return wanted
    if len(available) != 1:
        raise InputError(f"{path} has {'no' if not available else 'several'} signatures "
                         f"({', '.join(available) or 'none'}) and none named '{wanted}'; "
                         "pass --signature")
    return available[0]


class Exporter(Protocol):
    """One target: a module in tfopt/exporters/ (or package, like onnx/) with these names."""

    FORMAT: str  # the target name (--to)
    FILENAME: str  # the artifact's name in OUT
    # how tfopt compare recognizes such an artifact: a file's suffix (".onnx"), or a file a
    # directory artifact holds ("saved_model.pb")
    SUFFIX: str
    COMPANIONS: tuple[str, ...]  # files written beside a file artifact (files.companion)
    DEFAULT: bool  # converted without --to
    EXTRA: tuple[str, str] | None  # (module, pip extra) an optional target needs
    PACKAGES: tuple[str, ...]  # libraries whose versions report.json records
    MODES: frozenset[str]  # the --quantize modes it implements ("none" at least)
    PREPARE: tuple[str, ...]  # TF passes run on the exporter's own copy of the frozen graph

    def export(self, model: Model, path: Path, options: ExportOptions) -> Exported: ...

    def describe(self, path: Path, model: Model) -> dict[str, int]: ...  # op histogram

    def runner(self, path: Path, model: Model) -> Callable[[dict], dict]: ...

    # every intermediate tensor on one feed (the artifact's input names), by the artifact's
    # own tensor names (a quantized tensor under its float name, as its readers see it);
    # raises errors.TraceUnavailable where they cannot be read
    def trace(self, path: Path, feed: dict, signature: str | None) -> dict: ...

    # side-effect ops (pb, SavedModel) are refused unless allowed
    def open_artifact(self, path: Path, signature: str, allow_io_ops: bool = False
                      ) -> Opened: ...

    def read_precision(self, path: Path) -> str: ...  # of an artifact any tool made

    def unsupported_ops(self, model: Model, options: ExportOptions) -> list[str]: ...

    # raises UsageError for an option value this target cannot take (before anything loads)
    def check_options(self, options: ExportOptions) -> None: ...


WEIGHT_ELEMENTS = 1024  # float constants this large are a SavedModel's variables


def lift_weights(graph_def, min_elements: int = WEIGHT_ELEMENTS):
    """The graph with its large float constants turned into placeholders of the same name,
    and their values. Lookup-table contents stay constants (the table ops need them so)."""
    from tfopt.graph import const_view, consumers, without_large_constants

    readers = consumers(graph_def)
    out, lifted = without_large_constants(
        graph_def, min_elements,
        lambda name: not any(r.op.startswith("LookupTable") for r in readers.get(name, ())))
    return out, {name: const_view(node) for name, node in lifted.items()}


def serving_function(model: Model, weights_as_variables: bool = False):
    """The frozen graph as a tf.function with the signature's input names and a dict of outputs.

    External weights are the module's variables, and with weights_as_variables its large
    float constants too (as in the SavedModel training wrote): the graph stays small, under
    protobuf's 2 GB, and the TFLite converter freezes them itself, in a fraction of the
    memory inline constants cost.
    Returns (module, concrete function); the module keeps the function alive and savable.
    """
    import tensorflow as tf

    graph_def = rename_functions(model.graph_def, f"_tfopt{next(_CALLS)}")
    values = dict(model.weights)  # external weights are placeholders already
    if weights_as_variables:
        graph_def, lifted = lift_weights(graph_def)
        values.update(lifted)

    def import_graph():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(import_graph, [])
    graph = wrapped.graph
    pruned = wrapped.prune(
        feeds=[graph.get_tensor_by_name(t.tensor) for t in model.inputs]
        + [graph.get_tensor_by_name(f"{name}:0") for name in values],
        fetches={t.name: graph.get_tensor_by_name(t.tensor) for t in model.outputs})
    specs = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=t.name) for t in model.inputs]
    module = tf.Module()
    live = model.meta.get("variables", {})  # the source's own variables: no copy
    module.weights = [live[name] if name in live else
                      tf.Variable(values[name], name=name.replace(":", "_"), trainable=False)
                      for name in values]

    @tf.function(input_signature=specs)
    def serve(*args):
        return pruned(*args, *module.weights)

    module.serve = serve
    return module, serve.get_concrete_function()


def save_inference_model(model: Model, path, weights_as_variables: bool = True) -> None:
    """Write the frozen graph as a SavedModel with the model's signature; its large float
    constants become variables (the checkpoint in variables/) unless told otherwise."""
    import tensorflow as tf

    module, fn = serving_function(model, weights_as_variables)
    tf.saved_model.save(module, str(path), signatures={model.signature: fn})


def python_callbacks(model: Model) -> list[str]:
    """Ops that call back into Python: their code is not in the model, so no artifact can
    hold them."""
    from tfopt.security import PYTHON_CALLBACKS, io_ops

    return sorted({o.op for o in io_ops(model.graph_def) if o.family == PYTHON_CALLBACKS})


def recurrent_layers(model: Model) -> list[str]:
    """The frozen graph's loops (a Keras RNN layer each): While / StatelessWhile nodes."""
    return [n.name for n in model.graph_def.node if n.op in ("While", "StatelessWhile")]
