"""What every loader returns, and the freezing of a TF2 ConcreteFunction that they share."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tfopt.categories import is_optimizer_variable, writes_variable
from tfopt.errors import InputError, first_line
from tfopt.graph import (
    FORWARDING_OPS,
    empty_like,
    imported,
    inlined_size,
    node_name,
    op_histogram,
    plain_session,
    rename_node,
    unique_name,
)
from tfopt.loaders.tables import freeze_tables
from tfopt.loaders.weights import (
    LARGE_WEIGHT_BYTES,
    WrittenVariable,
    captured_variables,
    freeze,
)
from tfopt.model import SERVING_SIGNATURE, Model, TensorSpec
from tfopt.results import SourceInfo


@dataclass
class LoadOptions:
    signature: str = SERVING_SIGNATURE
    tags: list[str] | None = None
    inputs: list[str] | None = None  # TF1 graphs: --inputs specs, name[:dtype[:shape]]
    outputs: list[str] | None = None  # TF1 graphs: output tensors
    freeze: dict[str, str] = field(default_factory=dict)  # TF1: placeholder -> value
    unsafe_keras: bool = False  # load Keras files outside safe mode (runs their Python code)
    large_weight_bytes: int = LARGE_WEIGHT_BYTES  # variables this large stay external
    max_unpacked_bytes: int | None = None  # a .keras archive's limit (None: from its size)
    max_nodes: int | None = None  # a larger graph is refused (check_graph_size)
    max_call_depth: int | None = None  # and one whose calls nest deeper

    @property
    def graph_options(self) -> list[str]:
        """The flags that only signature-less TF1 graphs take, as given."""
        return [flag for flag, value in (("--inputs", self.inputs), ("--outputs", self.outputs),
                                         ("--freeze-placeholder", self.freeze)) if value]


@dataclass
class Loaded:
    model: Model
    source: SourceInfo
    # runs the original model on one feed dict (signature names -> arrays)
    reference: Callable[[dict], dict]
    removed: Counter = field(default_factory=Counter)
    passes: list = field(default_factory=list)  # PassReports of rewrites done while loading

    def release(self) -> None:
        """Let the original model go once it has run (its loaded objects and variables, and
        the frozen graph: the memory the exporters need next); external weights stay."""
        self.reference = _released
        for key in ("keepalive", "reference_session"):
            self.model.meta.pop(key, None)
        self.model = self.model.with_graph(empty_like(self.model.graph_def))


def _released(feed: dict) -> dict:
    raise RuntimeError("the original model was released after its reference run")


class Loader(Protocol):
    """One input format: a module in tfopt/loaders/ with these names."""

    FORMAT: str  # the name reports and inspect use

    def sniff(self, path: Path) -> bool: ...  # whether path is in this format

    def load(self, path: Path, options: LoadOptions) -> Loaded: ...  # frozen, with reference

    def describe(self, path: Path, options: LoadOptions) -> Description: ...  # for inspect


@dataclass
class Description:
    """What `tfopt inspect` reads from a source without freezing it."""

    graph_def: Any  # the whole graph as stored, training part included
    signatures: dict[str, tuple[list[TensorSpec], list[TensorSpec]]]  # name -> (ins, outs)
    variables: dict  # variable_stats()


def spec_from_info(name: str, info) -> TensorSpec:
    """A TensorSpec from a SignatureDef's TensorInfo."""
    import tensorflow as tf

    shape = None if info.tensor_shape.unknown_rank else tuple(
        None if d.size < 0 else d.size for d in info.tensor_shape.dim)
    return TensorSpec(name, dtype_name(tf.as_dtype(info.dtype)), shape)


def dtype_name(dtype) -> str:
    """A TF dtype as TensorSpec names it: the numpy name, or TF's for string and resource."""
    if dtype.name == "string" or not dtype.is_numpy_compatible:  # numpy calls it object
        return dtype.name
    return dtype.as_numpy_dtype.__name__


def signature_specs(meta) -> dict[str, tuple[list[TensorSpec], list[TensorSpec]]]:
    return {key: ([spec_from_info(k, v) for k, v in sorted(sig.inputs.items())],
                  [spec_from_info(k, v) for k, v in sorted(sig.outputs.items())])
            for key, sig in sorted(meta.signature_def.items()) if not key.startswith("__")}


def spec_from_tf(name: str, tf_spec) -> TensorSpec:
    shape = None if tf_spec.shape.rank is None else tuple(tf_spec.shape.as_list())
    return TensorSpec(name, dtype_name(tf_spec.dtype), shape)


def function_io_names(fn) -> tuple[list[str], list[str]]:
    """Signature names of a ConcreteFunction's flat inputs and outputs, in TF's flattening
    order. An output named like an input (a detection head's `boxes` in and out) is
    `<name>_output`: every artifact names its tensors in one namespace."""
    import tensorflow as tf

    args, kwargs = fn.structured_input_signature
    inputs = [spec.name or f"input_{i}" for i, spec in enumerate(tf.nest.flatten(args))]
    inputs += sorted(kwargs)
    if isinstance(fn.structured_outputs, dict):
        outputs = sorted(fn.structured_outputs)
    else:
        outputs = [f"output_{i}" for i in range(len(tf.nest.flatten(fn.structured_outputs)))]
    taken = set(inputs) | set(outputs)
    for i, name in enumerate(outputs):
        if name in inputs:
            outputs[i] = unique_name(f"{name}_output", taken)
            taken.add(outputs[i])
    return inputs, outputs


def freeze_function(fn, signature: str, large_weight_bytes: int = LARGE_WEIGHT_BYTES
                    ) -> tuple[Model, list]:
    """Fold the variables of a ConcreteFunction into constants and name its IO by the
    signature; variables of at least large_weight_bytes become external weights. Random
    augmentation layers that the function runs active become their inference form first.

    Returns the model and the PassReports of those inference rewrites.
    """
    import tensorflow as tf

    from tfopt.passes import PassContext, run_rewrite

    reports: list = []

    def rewrite(graph_def, frozen):
        ctx = PassContext(tuple(t.op.name for t in frozen.inputs),
                          tuple(t.op.name for t in frozen.outputs))
        graph_def, report = run_rewrite("strip_augmentation", graph_def, ctx)
        reports[:] = [report]  # freezing may inline twice: the last one stands
        return graph_def

    try:
        frozen, graph_def, weights, variables = freeze(fn, large_weight_bytes, rewrite)
    except WrittenVariable as exc:
        raise InputError(f"signature '{signature}' writes variable '{exc.variable}' ({exc.op} "
                         f"'{exc.node}'), so it is a training step, not inference; pass an "
                         "inference signature with --signature") from exc
    except Exception as exc:  # TF raises ValueError, InvalidArgumentError and others
        _, ops = graph_stats(fn.graph.as_graph_def())
        updates = sorted(op for op in ops if writes_variable(op))
        if updates:
            raise InputError(f"signature '{signature}' updates variables ({', '.join(updates)}), "
                             "so it is a training step; pass an inference signature with "
                             "--signature") from exc
        raise InputError(f"cannot freeze signature '{signature}': {first_line(exc)}") from exc
    in_names, out_names = function_io_names(fn)
    kept = set(captured_variables(fn))  # the variables' handles, now Placeholders or Consts
    extra = [t for t in list(frozen.inputs)[len(in_names):] if t.op.name not in kept]
    if extra and not freeze_tables(fn, graph_def, [t.op.name for t in extra]):
        _refuse_captured_resources(extra, signature)
    out_tensors = tf.nest.flatten(frozen.structured_outputs, expand_composites=True)
    name_signature(graph_def, [(n, t.op.name) for n, t in zip(in_names, frozen.inputs)],
                   [(n, t.name, t.dtype.as_datatype_enum) for n, t in zip(out_names, out_tensors)])
    model = Model(graph_def, [spec_from_tf(n, t) for n, t in zip(in_names, frozen.inputs)],
                  [spec_from_tf(n, t) for n, t in zip(out_names, out_tensors)], signature,
                  meta={"variables": variables}, weights=weights)
    return model, [r for r in reports if r.changes or r.skipped]


def rewritten_reference(model: Model, reports: list, original: Callable[[dict], dict]
                        ) -> tuple[Callable[[dict], dict], str]:
    """(reference, what it is): the original, or the frozen graph when an inference rewrite
    changed what the model computes (the original is then random or in training mode)."""
    rewritten = [r for r in reports if r.changes]
    if not rewritten:
        return original, "the original model"
    return frozen_reference(model), "the original model after " + ", ".join(
        f"{r.name} ({len(r.changes)})" for r in rewritten)


def frozen_reference(model: Model) -> Callable[[dict], dict]:
    """Runs the rewritten, frozen graph in TF: the original no longer means the same."""
    session = plain_session(imported(model.graph_def))
    model.meta["reference_session"] = session
    return session_reference(session, {t.name: t.tensor for t in model.inputs},
                             {t.name: t.tensor for t in model.outputs}, model.weights)


def session_reference(session, feeds: dict[str, str], fetches: dict[str, str],
                      frozen: dict[str, np.ndarray]) -> Callable[[dict], dict]:
    """Runs fetches in a TF1 session on a feed dict keyed by signature names; `frozen`
    feeds placeholders by node name (frozen values, external weights)."""
    def run(feed: dict) -> dict:
        values = {tensor: feed[name] for name, tensor in feeds.items()}
        values.update({f"{name}:0": value for name, value in frozen.items()})
        result = session.run(fetches, values)
        return {name: np.asarray(value) for name, value in result.items()}
    return run


def _refuse_captured_resources(extra: list, signature: str) -> None:
    """Freezing folds variables but leaves other captured resources (lookup tables, above
    all) as extra graph inputs that no artifact could be fed: name them."""
    import tensorflow as tf

    readers, frontier = set(), [op for t in extra for op in t.consumers()]
    while frontier:  # through the Identity that a captured handle usually goes through
        op = frontier.pop()
        if op.type in FORWARDING_OPS:
            frontier += [reader for out in op.outputs for reader in out.consumers()]
        else:
            readers.add(op.type)
    tables = sorted(op for op in readers if "LookupTable" in op or "HashTable" in op)
    if tables:
        raise InputError(f"signature '{signature}' reads a lookup table ({', '.join(tables)}: "
                         "a StringLookup, IntegerLookup, TextVectorization or "
                         "tf.lookup table), which tfopt cannot freeze yet; convert the "
                         "model without its lookup layer, or use the stock TFLite converter "
                         "for this model")
    kinds = ", ".join(sorted({tf.as_dtype(t.dtype).name for t in extra}))
    read_by = ", ".join(sorted(readers)) or "nothing"
    raise InputError(f"signature '{signature}' captures {len(extra)} resource(s) freezing "
                     f"cannot fold ({kinds} read by {read_by}); export an inference "
                     "signature that reads only variables")


def name_signature(graph_def, inputs: list[tuple[str, str]],
                   outputs: list[tuple[str, str, int]]) -> None:
    """Name a frozen graph's IO by the signature, in place: each input Placeholder node is
    renamed to its signature name, and each output gets an Identity node of its name.

    inputs: (signature name, Placeholder node); outputs: (signature name, tensor, dtype enum).
    A node that already holds a signature name is moved out of the way.
    """
    taken = {n.name for n in graph_def.node}
    renamed: dict[str, str] = {}

    def rename(old: str, new: str) -> None:
        rename_node(graph_def, old, new)
        renamed[old] = new
        taken.discard(old)
        taken.add(new)

    def current(name: str) -> str:
        while name in renamed:
            name = renamed[name]
        return name

    def free(name: str) -> None:
        if name in taken:
            rename(name, unique_name(name, taken))

    for name, node in inputs:
        if current(node) != name:
            free(name)
            rename(current(node), name)
    for name, ref, dtype in outputs:
        free(name)
        node = graph_def.node.add()
        node.name, node.op = name, "Identity"
        node.input.append(current(node_name(ref)) + ref[len(node_name(ref)):])
        node.attr["T"].type = dtype
        taken.add(name)


def call_signature(fn, feed: dict) -> dict[str, np.ndarray]:
    """Run a ConcreteFunction on a feed dict keyed by signature names."""
    import tensorflow as tf

    in_names, out_names = function_io_names(fn)
    args, kwargs = fn.structured_input_signature
    positional = [feed[n] for n in in_names[:len(tf.nest.flatten(args))]]
    named = {k: feed[k] for k in kwargs}
    result = fn(*positional, **named)
    flat = tf.nest.flatten(result)
    return {name: np.asarray(t) for name, t in zip(out_names, flat)}


def graph_stats(graph_def) -> tuple[int, dict[str, int]]:
    """Node count and op histogram of a graph, its function library included."""
    hist = Counter(op_histogram(graph_def))
    for fdef in graph_def.library.function:
        hist.update(n.op for n in fdef.node_def)
    return sum(hist.values()), dict(sorted(hist.items()))


def variable_stats(prefix: str | None) -> dict:
    """Counts and bytes of a checkpoint's variables (all, and the optimizer's among them)."""
    import tensorflow as tf

    stats = dict(variables=0, variable_bytes=0, optimizer_variables=0,
                 optimizer_variable_bytes=0)
    if prefix is None:
        return stats
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    for key, shape in reader.get_variable_to_shape_map().items():
        if key == "_CHECKPOINTABLE_OBJECT_GRAPH":
            continue
        size = int(np.prod(shape)) * dtypes[key].size
        stats["variables"] += 1
        stats["variable_bytes"] += size
        if is_optimizer_variable(key):
            stats["optimizer_variables"] += 1
            stats["optimizer_variable_bytes"] += size
    return stats


def check_graph_size(graph_def: Any, options: LoadOptions, what: str,
                     nodes: Iterable | None = None) -> None:
    """Refuse a graph past --max-nodes or --max-call-depth before anything costly runs. The
    nodes (default all) are counted as inlining functions would expand them: converters'
    time grows faster than that count, and with the call depth (inlined names grow with
    it), so past the limits a run would take hours, not fail."""
    count, depth = inlined_size(graph_def, nodes)
    if depth < 0:
        raise InputError(f"{what} has a function that calls itself, which TensorFlow cannot "
                         "run; re-export the model")
    limit = options.max_call_depth
    if limit and depth > limit:
        raise InputError(f"{what} nests function calls {depth:,} deep, more than "
                         f"--max-call-depth {limit:,}: converting it would take hours (1,000 "
                         "levels take a minute, 3,000 more than ten); raise --max-call-depth "
                         "to try anyway")
    limit = options.max_nodes
    if limit and count > limit:
        raise InputError(f"{what} has {count:,} nodes (its function calls expanded), more than "
                         f"--max-nodes {limit:,}: converting it would take hours (a 100,000-node "
                         "graph takes minutes, and the time grows faster than the node count); "
                         "raise --max-nodes to try anyway")
