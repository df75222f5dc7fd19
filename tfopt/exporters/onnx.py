"""ONNX (`model.onnx`) via tf2onnx on the frozen graph, checked by onnx.checker, run in onnxruntime."""
from __future__ import annotations

import contextlib
import functools
import logging
from collections import Counter
from pathlib import Path

from tfopt.errors import ConversionError, first_line
from tfopt.exporters.base import Exported, ExportOptions
from tfopt.logs import native_stderr_silenced
from tfopt.model import Model

FORMAT = "onnx"
FILENAME = "model.onnx"


@functools.cache
def default_opset() -> int:
    """The highest opset that tf2onnx, onnx and the installed onnxruntime all support."""
    import onnx
    import onnxruntime
    import tf2onnx
    from onnx import helper

    highest = min(max(tf2onnx.constants.OPSET_TO_IR_VERSION), onnx.defs.onnx_opset_version())
    for opset in range(highest, 7, -1):
        x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        probe.ir_version = tf2onnx.constants.OPSET_TO_IR_VERSION.get(opset, probe.ir_version)
        try:
            onnxruntime.InferenceSession(probe.SerializeToString(),
                                         providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # onnxruntime refuses opsets it does not know
            continue
    raise RuntimeError("onnxruntime accepts no opset that tf2onnx can write")


# handled by tf2onnx itself, not through an op handler
_STRUCTURAL = frozenset({"Placeholder", "PlaceholderWithDefault", "Const", "Identity", "NoOp",
                         "PartitionedCall", "StatefulPartitionedCall"})


def unsupported_ops(model: Model, options: ExportOptions) -> list[str]:
    """TF op types in the graph (function bodies included) that tf2onnx has no handler for
    at the opset."""
    import tf2onnx.onnx_opset  # noqa: F401  (registers the op handlers)
    from tf2onnx.handler import tf_op

    tf_op.create_mapping(options.opset or default_opset(), [])
    ops = {n.op for n in model.graph_def.node}
    ops |= {n.op for f in model.graph_def.library.function for n in f.node_def}
    return sorted(op for op in ops - _STRUCTURAL if tf_op.find_effective_op(op) is None)


def for_tf2onnx(model: Model):
    """The frozen graph as tf2onnx needs it.

    Keras 3 puts grouped convolutions in XLA-only functions (`_XlaMustCompile`, `_noinline`),
    which Grappler will not inline and tf2onnx leaves as raw calls: drop those marks and
    inline them (TF's CPU kernels could no longer run the graph; ONNX's Conv takes groups).
    Exact GELU's Erfc, which tf2onnx has no handler for, becomes 1 - Erf.
    """
    import numpy as np
    import tensorflow as tf

    from tfopt.graph import add_const, unique_name
    from tfopt.passes.grappler import optimize

    graph_def = type(model.graph_def)()
    graph_def.CopyFrom(model.graph_def)
    marks = ("_XlaMustCompile", "_noinline")
    calls = [n for n in graph_def.node if n.op in ("StatefulPartitionedCall", "PartitionedCall")]
    for node in calls:
        for mark in marks:
            node.attr.pop(mark, None)
    for function in graph_def.library.function:
        for mark in marks:
            function.attr.pop(mark, None)
    if calls:
        graph_def = optimize(graph_def, [t.name for t in model.inputs + model.outputs],
                             ["function"])
    taken = {n.name for n in graph_def.node}
    for node in [n for n in graph_def.node if n.op == "Erfc"]:
        erf = graph_def.node.add(name=unique_name(f"{node.name}/erf", taken), op="Erf",
                                 input=list(node.input))
        erf.attr["T"].CopyFrom(node.attr["T"])
        dtype = tf.dtypes.as_dtype(node.attr["T"].type).as_numpy_dtype
        one = add_const(graph_def, unique_name(f"{node.name}/one", taken), np.ones((), dtype))
        taken.update((erf.name, one.name))
        node.op = "Sub"
        node.input[:] = [one.name, erf.name]
    return graph_def


def export(model: Model, path: Path, options: ExportOptions) -> Exported:
    import onnx
    import tf2onnx

    from tensorflow.python.util import deprecation

    opset = options.opset or default_opset()
    try:
        with deprecation.silence():  # tf2onnx calls TF1 APIs that log a warning each
            proto, _ = tf2onnx.convert.from_graph_def(
                for_tf2onnx(model), name=model.signature, opset=opset,
                input_names=[t.tensor for t in model.inputs],
                output_names=[t.tensor for t in model.outputs],
                tensors_to_rename={t.tensor: t.name for t in model.inputs + model.outputs})
    except Exception as exc:  # tf2onnx raises ValueError, KeyError and others
        raise ConversionError(f"tf2onnx failed: {first_line(exc)}") from exc
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        unknown = sorted({n.op_type for n in proto.graph.node
                          if not onnx.defs.has(n.op_type, n.domain or "")})
        hint = f"; ops with no ONNX equivalent: {', '.join(unknown)}" if unknown else ""
        raise ConversionError(f"tf2onnx wrote an invalid ONNX model{hint}: {first_line(exc)}",
                              details={"blocking_ops": unknown}) from exc
    proto, steps = post_optimize(proto)
    recurrent = _recurrent(proto)
    if options.quantize == "none":
        onnx.save(compact_names(proto), str(path))
        return Exported(steps=steps, recurrent=recurrent)
    try:
        with _quiet_logging():
            QUANTIZERS[options.quantize](proto, path, options)
    except ConversionError:
        raise
    except Exception as exc:  # onnxruntime.quantization raises anything
        raise ConversionError(f"onnxruntime cannot quantize to {options.quantize}: "
                              f"{first_line(exc)}") from exc
    onnx.save(compact_names(onnx.load(str(path))), str(path))
    return Exported(precision=PRECISION[options.quantize], steps=steps, recurrent=recurrent)


RECURRENT = {"LSTM": "native ONNX LSTM (tf2onnx's LSTM rewriter)",
             "GRU": "native ONNX GRU (tfopt's GRU loop rewrite, verified by running both)",
             "RNN": "native ONNX RNN", "Loop": "generic Loop (no native op matched)",
             "Scan": "generic Scan (no native op matched)"}


def _recurrent(proto) -> list[dict]:
    return [{"node": n.name, "op": n.op_type, "conversion": RECURRENT[n.op_type]}
            for n in proto.graph.node if n.op_type in RECURRENT]


def compact_names(proto):
    """Drop the scope prefix that every internal name shares (TF's `StatefulPartitionedCall/
    model/`): quantization writes each name three times per edge, and on small models the
    names outweigh the int8 weights. Graph input and output names are kept."""
    import os

    graph = proto.graph
    kept = {v.name for v in list(graph.input) + list(graph.output)}
    names = [n.name for n in graph.node] + [t for n in graph.node for t in
                                           list(n.input) + list(n.output)]
    names += [i.name for i in graph.initializer]
    scoped = [n for n in names if "/" in n and n not in kept]  # "x_scale" has no scope
    prefix = os.path.commonprefix(scoped) if scoped else ""
    prefix = prefix[:prefix.rfind("/") + 1]
    if not prefix:
        return proto

    def short(name: str) -> str:
        return name[len(prefix):] if name.startswith(prefix) and name not in kept else name

    if len({short(n) for n in names}) != len(set(names)):
        return proto  # a shortened name would collide with an existing one

    for node in graph.node:
        node.name = short(node.name)
        node.input[:] = [short(t) for t in node.input]
        node.output[:] = [short(t) for t in node.output]
    for tensor in list(graph.initializer) + list(graph.value_info):
        tensor.name = short(tensor.name)
    return proto


MODES = frozenset({"none", "fp16", "dynamic", "int8", "int16x8"})


@contextlib.contextmanager
def _quiet_logging():
    """onnxruntime.quantization logs advice through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
PRECISION = {"fp16": "fp16", "dynamic": "dynamic-int8", "int8": "int8", "int16x8": "int16x8"}
FP16_MAX = 65504.0


def _fp16(proto, path: Path, options: ExportOptions) -> None:
    """fp16 weights and compute, fp32 inputs/outputs; nodes whose values overflow fp16 on the
    calibration data, and the nodes reading those values, stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # an overflowing node's readers stay fp32 too: a Cast to fp16 before them would overflow
    blocked = float_nodes(proto, set(options.float_layers)
                          | set(_overflowing(proto, options.calibration)))
    converted = convert_float_to_float16(proto, keep_io_types=True,
                                         node_block_list=blocked or None)
    onnx.save(_drop_cast_round_trips(converted), str(path))


def _drop_cast_round_trips(proto):
    """fp32 -> Cast(fp16) -> Cast(fp32) between two fp32 nodes becomes a plain edge.

    onnxruntime's fp16 converter casts every blocked node's output to fp16 and back, so a
    value that overflows fp16 overflows there even when both of its nodes stay fp32.
    """
    import onnx

    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) \
            if node.op_type == "Cast" else None

    outputs = {o.name for o in graph.output}
    replace, dropped = {}, set()
    for node in graph.node:
        first = producer.get(node.input[0]) if node.op_type == "Cast" else None
        if cast_to(node) == onnx.TensorProto.FLOAT and first is not None \
                and cast_to(first) == onnx.TensorProto.FLOAT16:
            if node.output[0] in outputs:  # a graph output keeps its producer
                node.op_type = "Identity"
                del node.attribute[:]
                node.input[0] = first.input[0]
                continue
            replace[node.output[0]] = first.input[0]
            dropped.add(id(node))
    if not replace and not dropped:
        return proto
    kept = [n for n in graph.node if id(n) not in dropped]
    for node in kept:
        node.input[:] = [replace.get(i, i) for i in node.input]
    used = {i for n in kept for i in n.input} | outputs
    kept = [n for n in kept if n.op_type != "Cast" or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(kept)
    return proto


def _overflowing(proto, feeds: list[dict] | None) -> list[str]:
    """Nodes with an output beyond the fp16 range on any feed."""
    import numpy as np
    import onnx
    import onnxruntime

    if not feeds:
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    known = {o.name for o in probe.graph.output}
    producer = {}
    for node in probe.graph.node:
        for out in node.output:
            producer[out] = node.name
            if out and out not in known:
                probe.graph.output.add().name = out
    session = onnxruntime.InferenceSession(probe.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    hot = set()
    for feed in feeds[:32]:
        for name, value in zip(names, session.run(names, feed)):
            value = np.asarray(value)
            if value.dtype.kind == "f" and value.size and np.nanmax(np.abs(value)) > FP16_MAX:
                hot.add(producer.get(name, name))
    return sorted(hot)


def float_nodes(proto, layers) -> list[str]:
    """ONNX nodes that keep TF layers (node names) in float: the nodes computing them, and
    the nodes reading their outputs (a quantized reader would quantize the tensor anyway)."""
    if not layers:
        return []
    wanted = set(layers)

    def computes(node) -> bool:
        return node.name in wanted or any(o.split(":")[0] in wanted for o in node.output)

    producers = [n for n in proto.graph.node if computes(n)]
    outputs = {o for n in producers for o in n.output}
    readers = [n for n in proto.graph.node if outputs & set(n.input)]
    return sorted({n.name for n in producers + readers if n.name})


def _dynamic(proto, path: Path, options: ExportOptions) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(proto, str(path), weight_type=QuantType.QInt8,
                     nodes_to_exclude=float_nodes(proto, options.float_layers) or None)


class _Reader:
    """The calibration feeds as onnxruntime's CalibrationDataReader."""

    def __init__(self, feeds: list[dict]):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self):  # noqa: D102  (the interface asks for it)
        pass


def _static(proto, path: Path, options: ExportOptions) -> None:
    """QDQ, per-channel int8 weights; activations uint8 (int8 mode) or int16 (int16x8)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    sixteen = options.quantize == "int16x8"
    with tempfile.TemporaryDirectory(prefix="tfopt-onnxq-") as work:
        prepared = Path(work) / "prepared.onnx"
        onnx.save(proto, str(Path(work) / "float.onnx"))
        with native_stderr_silenced():
            quant_pre_process(str(Path(work) / "float.onnx"), str(prepared),
                              skip_symbolic_shape=True)
            # after pre-processing: its fusions (MatMul+Add -> Gemm) rename nodes
            excluded = float_nodes(onnx.load(str(prepared)), options.float_layers)
            quantize_static(
                str(prepared), str(path), _Reader(options.calibration),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt16 if sixteen else QuantType.QUInt8,
                weight_type=QuantType.QInt8, nodes_to_exclude=excluded or None,
                extra_options={"UseQDQContribOps": sixteen})


QUANTIZERS = {"fp16": _fp16, "dynamic": _dynamic, "int8": _static, "int16x8": _static}


def _onnxoptimizer(proto):
    import onnxoptimizer

    return onnxoptimizer.optimize(proto, onnxoptimizer.get_fuse_and_elimination_passes())


def _onnxslim(proto):
    import onnxslim

    return onnxslim.slim(proto)


def _gemm(proto):
    """MatMul(A 2-D, B const) + Add(bias const [N]) -> Gemm: Keras' Dense as one node.

    Written here because neither onnxoptimizer's fuse_matmul_add_bias_into_gemm nor onnxslim
    fuses tf2onnx's Dense (measured on MobileNetV2: both leave the MatMul + Add pair).
    """
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(proto)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             list(inferred.graph.value_info) + list(inferred.graph.input)
             if v.type.tensor_type.HasField("shape")}
    constants = {i.name: i for i in proto.graph.initializer}
    readers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in proto.graph.output}
    fused, drop = {}, set()
    for node in proto.graph.node:
        if node.op_type != "MatMul" or ranks.get(node.input[0]) != 2 \
                or node.input[1] not in constants or node.output[0] in outputs:
            continue
        weights = numpy_helper.to_array(constants[node.input[1]])
        after = readers.get(node.output[0], [])
        if weights.ndim != 2 or len(after) != 1 or after[0].op_type != "Add":
            continue
        add = after[0]
        bias_name = next((i for i in add.input if i != node.output[0]), None)
        if bias_name not in constants or \
                numpy_helper.to_array(constants[bias_name]).shape != (weights.shape[1],):
            continue
        fused[id(add)] = onnx.helper.make_node("Gemm", [node.input[0], node.input[1], bias_name],
                                               list(add.output), name=add.name or node.name)
        drop.add(id(node))
    if not fused:
        return proto
    nodes = [fused.get(id(n), n) for n in proto.graph.node if id(n) not in drop]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def _hard_activations(proto):
    """Keras' hard_sigmoid and hard_swish, left by tf2onnx as Add(x, 3) -> Clip(0, 6) ->
    Mul(1/6) [-> Mul(x, .)], become ONNX HardSigmoid / HardSwish (opset 14).

    Written here because neither optimizer matches them (measured on MobileNetV3Small: 19
    hard-swish chains stay as four nodes each, with their "+3" reading the conv output).
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    if _opset(proto) < 14:
        return proto
    graph = proto.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t)
                      for n in graph.node if n.op_type == "Constant" and n.attribute
                      and n.attribute[0].name == "value"})
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def scalar(name: str, value: float) -> bool:
        array = constants.get(name)
        return array is not None and array.size == 1 and np.isclose(float(array.ravel()[0]),
                                                                     value)

    def only_reader(name: str, op: str):
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op \
            and name not in outputs else None

    replaced, dropped = {}, set()
    producers = {o: n for n in graph.node for o in n.output}
    for clip in graph.node:
        if clip.op_type != "Clip" or len(clip.input) != 3 or not (
                scalar(clip.input[1], 0.0) and scalar(clip.input[2], 6.0)):
            continue
        add = producers.get(clip.input[0])
        x = None if add is None or add.op_type != "Add" or only_reader(add.output[0], "Clip") \
            is None else next((a for a, b in (add.input, add.input[::-1]) if scalar(b, 3.0)),
                              None)
        # without the Add, its "+3" was folded into the bias of the op before (beta 0)
        chain, beta = ([add, clip], 0.5) if x is not None else ([clip], 0.0)
        x = x if x is not None else clip.input[0]
        scale = only_reader(clip.output[0], "Mul") or only_reader(clip.output[0], "Div")
        if scale is None or not any(scalar(i, 1 / 6 if scale.op_type == "Mul" else 6.0)
                                    for i in scale.input if i != clip.output[0]):
            continue
        chain.append(scale)
        swish = only_reader(scale.output[0], "Mul") if beta else None
        if swish is not None and x in swish.input and swish.input[0] != swish.input[1]:
            chain.append(swish)
            new = onnx.helper.make_node("HardSwish", [x], list(swish.output), name=swish.name)
        else:
            new = onnx.helper.make_node("HardSigmoid", [x], list(scale.output), name=scale.name,
                                        alpha=1 / 6, beta=beta)
        if any(id(n) in dropped for n in chain):
            continue
        replaced[id(chain[-1])] = new
        dropped.update(id(n) for n in chain[:-1])
    if not replaced:
        return proto
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return proto


def _grus(proto):
    """Keras GRU loops -> ONNX GRU (tfopt/exporters/onnx_rnn.py), each rewrite verified."""
    from tfopt.exporters.onnx_rnn import rewrite_grus

    reference = _run_random(proto)
    if reference is None:
        return proto

    def same(candidate) -> bool:
        outputs = _run_random(candidate)
        return outputs is not None and all(
            a.shape == b.shape and np.allclose(a, b, atol=1e-5, rtol=1e-4)
            for a, b in zip(reference, outputs))

    import numpy as np

    proto, _ = rewrite_grus(proto, same)
    return proto


def _run_random(proto):
    """The model's outputs on fixed random inputs (unknown dims: 2), or None if it fails."""
    import numpy as np
    import onnx
    import onnxruntime

    rng = np.random.default_rng(0)
    feed = {}
    for value in proto.graph.input:
        kind = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 2 for d in kind.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)
        feed[value.name] = rng.standard_normal(shape).astype(dtype) \
            if np.issubdtype(dtype, np.floating) else np.ones(shape, dtype)
    try:
        session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        return session.run(None, feed)
    except Exception:  # a candidate onnxruntime refuses is simply not taken
        return None


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


# measured on MobileNetV2/ResNet50/EfficientNetB0 (tf2onnx -> nodes): onnxoptimizer folds
# every Pad into its Conv (107->103, 126->125, 297->293), onnxslim misses ResNet50's but
# folds EfficientNet's squeeze-excite Reshapes (297->275); in this order both gains add up
POST_OPTIMIZERS = (("gru", _grus), ("onnxoptimizer", _onnxoptimizer), ("onnxslim", _onnxslim),
                   ("gemm", _gemm), ("hard_activations", _hard_activations))


def post_optimize(proto):
    """Run the maintained ONNX optimizers in turn; a step whose result fails the full
    onnx.checker (shape inference included) is skipped and reported, never fatal."""
    import contextlib
    import io

    import onnx

    steps = [{"step": "tf2onnx", "nodes": len(proto.graph.node)}]
    for name, optimize in POST_OPTIMIZERS:
        source = onnx.ModelProto()
        source.CopyFrom(proto)
        try:
            with contextlib.redirect_stdout(io.StringIO()), native_stderr_silenced():
                candidate = optimize(source)
            onnx.checker.check_model(candidate, full_check=True)
        except Exception as exc:  # the optimizers raise anything; keep the last good model
            steps.append({"step": name, "error": first_line(exc)})
            continue
        proto = candidate
        steps.append({"step": name, "nodes": len(proto.graph.node)})
    return proto, steps


def describe(path: Path, model: Model) -> dict[str, int]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in proto.graph.node).items()))


def runner(path: Path, model: Model):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feed: dict) -> dict:
        return dict(zip(names, session.run(names, feed)))
    return run

