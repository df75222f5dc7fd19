"""What the TF1 loaders share: a graph in a Session, cut and frozen for inference.

The TF1 SavedModel, checkpoint and GraphDef loaders each open a Session holding the whole
graph (training machinery included) and its variable values, then call `freeze_session`:

    cut inputs (--inputs) -> inference rewrites on the whole graph (training switches to
    constants, constant control flow folded, training batch norm, dropout) -> variables to
    constants with TF's convert_variables_to_constants_from_session_graph -> named IO.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfopt.categories import classify, is_input_pipeline_op, is_update_op
from tfopt.errors import InputError, UsageError, first_line
from tfopt.graph import (
    consumers,
    copy_graph,
    is_control,
    node_name,
    reachable,
    rename_node,
    unique_name,
)
from tfopt.loaders.base import (
    Loaded,
    LoadOptions,
    frozen_reference,
    graph_stats,
    name_signature,
    session_reference,
    variable_stats,
)
from tfopt.loaders.weights import LARGE_WEIGHT_BYTES
from tfopt.model import Model, TensorSpec
from tfopt.results import SourceInfo

CONTROL_FLOW = frozenset({"Switch", "RefSwitch", "If", "StatelessIf"})
_NOT_OUTPUTS = frozenset({"Const", "NoOp", "Placeholder", "PlaceholderWithDefault",
                          "VariableV2", "VarHandleOp", "VarIsInitializedOp", "Assert", "Switch",
                          "RefSwitch", "Merge", "RefMerge", "Enter", "Exit", "NextIteration",
                          "LoopCond", "ControlTrigger", "Shape", "ShapeN", "Size", "Rank"})
# rewrites after which the original graph no longer computes what the artifacts compute
_MEANING_CHANGES = ("training_batch_norm", "remove_dropout")


@dataclass(frozen=True)
class Cut:
    """An --inputs entry: the tensor to replace by a Placeholder, with optional dtype/shape."""

    tensor: str
    dtype: str | None = None
    shape: tuple[int | None, ...] | None = None

    @property
    def name(self) -> str:
        node, port = self.tensor.rsplit(":", 1)
        return node if port == "0" else f"{node}_{port}"


def tensor_ref(text: str) -> str:
    """'a' -> 'a:0'; 'a:1' stays."""
    return text if _port_given(text) else f"{text}:0"


def _port_given(text: str) -> bool:
    _, sep, port = text.rpartition(":")
    return bool(sep) and port.isdigit()


def parse_cut(text: str) -> Cut:
    """'name[:port][:dtype[:d1,d2,...]]', -1 for an unknown dimension."""
    parts = text.strip().split(":")
    if not parts[0]:
        raise UsageError(f"--inputs '{text}' has no tensor name; use name[:dtype[:shape]], "
                         "e.g. IteratorGetNext:0:float32:1,224,224,3")
    tensor = parts.pop(0)
    tensor += ":" + (parts.pop(0) if parts and parts[0].isdigit() else "0")
    dtype = parts.pop(0) if parts and parts[0] else None
    if parts and not parts[0]:
        parts.pop(0)
    shape = None
    try:
        if dtype is not None:
            np.dtype(dtype)
        if parts:
            dims = parts.pop(0)
            shape = tuple(None if int(d) < 0 else int(d) for d in dims.split(",")) if dims \
                else ()
        if parts:
            raise ValueError
    except (TypeError, ValueError):
        raise UsageError(f"--inputs '{text}' is not name[:dtype[:shape]] with a numpy dtype and "
                         "comma-separated dims (-1 for unknown), e.g. "
                         "IteratorGetNext:0:float32:1,224,224,3") from None
    return Cut(tensor, dtype, shape)


def parse_value(node, text) -> np.ndarray:
    """A --freeze-placeholder value as an array of the placeholder's dtype."""
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(node.attr["dtype"].type).as_numpy_dtype
    if not isinstance(text, str):
        return np.asarray(text, dtype=dtype)
    lowered = text.strip().lower()
    try:
        if dtype == np.bool_:
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError
            return np.asarray(lowered in ("true", "1"))
        return np.asarray([float(v) for v in lowered.split(",")] if "," in lowered
                          else float(lowered)).astype(dtype)
    except ValueError:
        raise UsageError(f"--freeze-placeholder {node.name}={text} is not a "
                         f"{np.dtype(dtype).name} value") from None


def _training_tainted(graph_def) -> set[str]:
    """Nodes whose value depends on a variable update: not inference outputs."""
    functions = {f.signature.name: f for f in graph_def.library.function}

    def updates(node) -> bool:
        if is_update_op(node.op):
            return True
        called = [a.func.name for a in node.attr.values() if a.HasField("func")]
        return any(is_update_op(n.op) for f in called if f in functions
                   for n in functions[f].node_def)

    readers = consumers(graph_def)
    stack = [n for n in graph_def.node if updates(n)]
    tainted = set()
    while stack:
        node = stack.pop()
        if node.name in tainted:
            continue
        tainted.add(node.name)
        stack.extend(r for r in readers.get(node.name, ())
                     if any(node_name(ref) == node.name and not is_control(ref) for ref in r.input))
    return tainted


def candidate_outputs(graph_def, limit: int = 10) -> list[str]:
    """Nodes that look like inference outputs: computed, not training-only, and read by
    nothing but summaries (control edges count: cond scaffolding is read only by them)."""
    tainted = _training_tainted(graph_def)
    read = {node_name(ref) for n in graph_def.node if classify(n) != "summaries"
            for ref in n.input}
    switches = {n.name for n in graph_def.node if n.op in ("Switch", "RefSwitch")}
    found = [n.name for n in graph_def.node
             if not any(node_name(ref) in switches for ref in n.input)  # cond scaffolding
             and n.name not in read and n.name not in tainted and classify(n) in (None, "identity")
             and n.op not in _NOT_OUTPUTS and not is_input_pipeline_op(n.op)]
    return found[:limit]


def input_sources(graph_def, roots) -> tuple[list, list]:
    """(Placeholder nodes, iterator/queue nodes) that the given nodes depend on."""
    needed = reachable(graph_def, roots)
    placeholders = [n for n in graph_def.node if n.name in needed and n.op == "Placeholder"]
    readers = [n for n in graph_def.node if n.name in needed
               and n.op.startswith(("IteratorGetNext", "QueueDequeue"))]
    return placeholders, readers


def cut_hint(graph, node) -> str:
    """The --inputs value that replaces a reader's first output with a Placeholder."""
    tensor = graph.get_operation_by_name(node.name).outputs[0]
    dims = "" if tensor.shape.rank is None else ",".join(
        "-1" if d is None else str(d) for d in tensor.shape.as_list())
    return f"{node.name}:0:{tensor.dtype.name}:{dims}"


@dataclass
class Session:
    """A TF1 graph loaded into a Session with its variable values."""

    graph: Any  # tf.Graph
    session: Any  # tf.compat.v1.Session
    graph_def: Any  # the whole graph, as loaded
    path: Path
    format: str
    checkpoint: str | None = None  # variables' checkpoint prefix, for the stats


def check_options(options: LoadOptions) -> None:
    """Say which options a TF1 graph does not take, before anything loads."""
    if options.large_weight_bytes != LARGE_WEIGHT_BYTES:
        warnings.warn("--large-weight-bytes applies to TF2 SavedModels and Keras files; a TF1 "
                      "graph's variables are frozen into its constants (model.pb keeps "
                      "protobuf's 2 GB limit)", stacklevel=3)


def freeze_session(loaded: Session, inputs: list[tuple[str, str]] | None,
                   outputs: list[tuple[str, str]] | None, cuts: list[Cut],
                   values: dict[str, str], signature: str,
                   values_hint: str = "check that the checkpoint holds every variable the "
                   "outputs need") -> Loaded:
    """Cut, rewrite for inference and freeze a TF1 graph.

    inputs/outputs: (signature name, tensor) pairs from a signature, or None when the graph
    has none. --inputs (cuts) replace the signature's inputs; --outputs replace its outputs.
    """
    from tfopt.passes import INFERENCE_REWRITES, run_pipeline

    graph_def, graph = loaded.graph_def, loaded.graph
    nodes = {n.name: n for n in graph_def.node}
    outputs = outputs or _guess_outputs(graph_def, loaded.path)
    for _, ref in outputs:
        if node_name(ref) not in nodes:
            raise UsageError(f"output '{ref}' is not in the graph; candidates: "
                             f"{', '.join(candidate_outputs(graph_def)) or 'none'}")
    frozen_values = {}
    for name, text in values.items():
        if name not in nodes or nodes[name].op not in ("Placeholder", "PlaceholderWithDefault"):
            names = [n.name for n in graph_def.node if n.op.startswith("Placeholder")]
            raise UsageError(f"--freeze-placeholder names '{name}', which is not a placeholder; "
                             f"placeholders: {', '.join(names) or 'none'}")
        frozen_values[name] = parse_value(nodes[name], text)

    given = [(c.name, c) for c in cuts] if cuts else \
        [(name, Cut(tensor_ref(ref))) for name, ref in inputs or []]
    graph_def, placeholder_of = _apply_cuts(graph_def, graph, [c for _, c in given])
    io_inputs = [(name, placeholder_of[c.tensor], c) for name, c in given]
    out_nodes = [node_name(ref) for _, ref in outputs]
    _check_switches(graph_def, out_nodes, frozen_values)
    found, readers = input_sources(graph_def, out_nodes)
    if readers:
        hints = " ".join(f"--inputs {cut_hint(graph, r)}" for r in readers)
        raise UsageError(f"the graph reads its input from {', '.join(r.name for r in readers)} "
                         "(a dataset iterator or queue), which no runtime can feed; replace it "
                         f"with a placeholder: {hints}")
    fed = {node for _, node, _ in io_inputs} | set(frozen_values)
    missing = [p.name for p in found if p.name not in fed]
    if missing and inputs is not None and not cuts:
        raise UsageError(f"the outputs need placeholder(s) {', '.join(missing)}, which the "
                         "signature does not feed; give them a value with "
                         f"--freeze-placeholder {missing[0]}=VALUE or list every input with "
                         "--inputs")
    io_inputs += [(name, name, Cut(f"{name}:0")) for name in missing]

    work = Model(graph_def, [TensorSpec(node, "float32", None) for _, node, _ in io_inputs],
                 [TensorSpec(n, "float32", None) for n in out_nodes], signature)
    work, reports = run_pipeline(work, INFERENCE_REWRITES, frozen_values)
    graph_def = work.graph_def
    keep = reachable(graph_def, out_nodes)
    removed = Counter(classify(n) or "unreachable" for n in graph_def.node if n.name not in keep)
    for report in reports:
        removed.update(report.removed)
    frozen = _freeze_variables(loaded.session, graph_def, out_nodes, values_hint)

    out_dtypes = [graph.get_tensor_by_name(tensor_ref(ref)).dtype for _, ref in outputs]
    name_signature(frozen, [(name, node) for name, node, _ in io_inputs],
                   [(name, ref, dtype.as_datatype_enum)
                    for (name, ref), dtype in zip(outputs, out_dtypes)])
    in_specs = [_spec(name, graph, cut) for name, _, cut in io_inputs]
    out_specs = [_spec(name, graph, Cut(tensor_ref(ref))) for name, ref in outputs]
    model = Model(frozen, in_specs, out_specs, signature)
    model.meta["keepalive"] = loaded.session
    rewritten = [r for r in reports if r.name in _MEANING_CHANGES and r.changes]
    if rewritten:
        reference = frozen_reference(model)
    else:
        reference = session_reference(
            loaded.session, {name: cut.tensor for name, _, cut in io_inputs},
            {name: tensor_ref(ref) for name, ref in outputs}, frozen_values)

    count, ops = graph_stats(loaded.graph_def)
    source = SourceInfo(
        path=str(loaded.path), format=loaded.format, signature=signature, nodes=count,
        ops=ops, **variable_stats(loaded.checkpoint),
        reference="the original graph after " + ", ".join(
            f"{r.name} ({len(r.changes)})" for r in rewritten) if rewritten else
        "the original graph")
    return Loaded(model, source, reference, removed, reports)


def _spec(name: str, graph, cut: Cut) -> TensorSpec:
    from tfopt.loaders.base import spec_from_tf

    spec = spec_from_tf(name, graph.get_tensor_by_name(cut.tensor))
    return TensorSpec(name, cut.dtype or spec.dtype,
                      cut.shape if cut.shape is not None else spec.shape)


def _guess_outputs(graph_def, path: Path) -> list[tuple[str, str]]:
    found = candidate_outputs(graph_def)
    if len(found) == 1:
        return [(found[0], f"{found[0]}:0")]
    raise UsageError(f"{path} has no signature, so pass its outputs with --outputs; candidates: "
                     f"{', '.join(found) or 'none found'}"
                     + (f" (e.g. --outputs {found[0]})" if found else ""))


def _apply_cuts(graph_def, graph, cuts: list[Cut]):
    """Make each cut tensor a Placeholder; returns (graph_def, {tensor: Placeholder name})."""
    import tensorflow as tf

    out = copy_graph(graph_def)
    taken = {n.name for n in out.node}
    placeholder_of = {}
    for cut in cuts:
        try:
            tensor = graph.get_tensor_by_name(cut.tensor)
        except (KeyError, ValueError):
            raise UsageError(f"--inputs names '{cut.tensor}', which is not a tensor of the "
                             "graph") from None
        node, port = tensor.op.name, tensor.value_index
        if tensor.op.type == "Placeholder":
            placeholder = next(n for n in out.node if n.name == node)
        else:
            if cut.name in taken:  # the node holding the name moves aside
                moved = unique_name(f"{cut.name}/replaced", taken)
                rename_node(out, cut.name, moved)
                taken.add(moved)
                node = moved if node == cut.name else node
            for n in out.node:
                for i, ref in enumerate(n.input):
                    if not is_control(ref) and tensor_ref(ref) == f"{node}:{port}":
                        n.input[i] = cut.name
            placeholder = out.node.add()
            placeholder.name, placeholder.op = cut.name, "Placeholder"
            taken.add(cut.name)
        dtype = tf.as_dtype(cut.dtype) if cut.dtype else tensor.dtype
        shape = cut.shape if cut.shape is not None else (
            None if tensor.shape.rank is None else tuple(tensor.shape.as_list()))
        placeholder.attr["dtype"].type = dtype.as_datatype_enum
        placeholder.attr["shape"].shape.Clear()
        if shape is None:
            placeholder.attr["shape"].shape.unknown_rank = True
        for d in shape or ():
            placeholder.attr["shape"].shape.dim.add(size=-1 if d is None else d)
        placeholder_of[cut.tensor] = placeholder.name
    return out, placeholder_of


def _check_switches(graph_def, outputs, frozen) -> None:
    """A plain bool placeholder that selects control flow must be given a value."""
    needed = reachable(graph_def, outputs)
    nodes = {n.name: n for n in graph_def.node}
    for node in graph_def.node:
        if node.name not in needed or node.op not in CONTROL_FLOW:
            continue
        pred = node.input[1] if "Switch" in node.op else node.input[0]
        source = nodes.get(node_name(pred))
        while source is not None and source.op in ("Identity", "LogicalNot"):
            source = nodes.get(node_name(source.input[0]))
        if source is not None and source.op == "Placeholder" and source.name not in frozen:
            raise UsageError(
                f"placeholder '{source.name}' selects the branches of {node.name} ({node.op}), "
                f"so the exported model would keep both; pass --freeze-placeholder "
                f"{source.name}=false (or its inference value)")


def _freeze_variables(session, graph_def, outputs: list[str], hint: str):
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_from_session_graph,
    )

    try:
        return convert_variables_to_constants_from_session_graph(session, graph_def, outputs)
    except Exception as exc:  # FailedPreconditionError for an uninitialized variable, ...
        raise InputError(f"cannot freeze the variables: {first_line(exc)}; {hint}") from exc
