"""ONNX (`model.onnx`) via tf2onnx on the frozen graph, checked by onnx.checker, run in onnxruntime."""
from __future__ import annotations

import functools
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


def export(model: Model, path: Path, options: ExportOptions) -> Exported:
    import onnx
    import tf2onnx

    opset = options.opset or default_opset()
    try:
        proto, _ = tf2onnx.convert.from_graph_def(
            model.graph_def, name=model.signature, opset=opset,
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
    onnx.save(proto, str(path))
    return Exported(steps=steps)


def _onnxoptimizer(proto):
    import onnxoptimizer

    return onnxoptimizer.optimize(proto, onnxoptimizer.get_fuse_and_elimination_passes())


def _onnxslim(proto):
    import onnxslim

    return onnxslim.slim(proto)


# measured on MobileNetV2/ResNet50/EfficientNetB0 (tf2onnx -> nodes): onnxoptimizer folds
# every Pad into its Conv (107->103, 126->125, 297->293), onnxslim misses ResNet50's but
# folds EfficientNet's squeeze-excite Reshapes (297->275); in this order both gains add up
POST_OPTIMIZERS = (("onnxoptimizer", _onnxoptimizer), ("onnxslim", _onnxslim))


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

