"""ONNX post-training quantization with onnxruntime's quantizers: fp16, dynamic-range int8,
static QDQ int8 and int16x8; layers named in options.float_layers stay float."""
from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tfopt.exporters.base import ExportOptions
from tfopt.exporters.onnx.graph import sort_nodes
from tfopt.exporters.onnx.rewrites import run_rewrites
from tfopt.exporters.onnx.runtime import session
from tfopt.logs import native_stderr_silenced

FP16_MAX = 65504.0
# a quantization-aware model's pairs: their scales must stay float32 (ONNX takes no other)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# the ops whose int8 form saves the work (the rest only move values between them)
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


@contextlib.contextmanager
def quiet_logging() -> Iterator[None]:
    """onnxruntime.quantization logs advice through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _fp16(proto: Any, path: Path, options: ExportOptions) -> list[dict]:
    """fp16 weights and compute, fp32 inputs/outputs; nodes whose values overflow fp16 on the
    calibration data, and the nodes reading those values, stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import (
        DEFAULT_OP_BLOCK_LIST,
        convert_float_to_float16,
    )

    # an overflowing node's readers stay fp32 too: a Cast to fp16 before them would overflow
    blocked = float_nodes(proto, set(options.float_layers)
                          | set(_overflowing(proto, options.calibration)))
    converted = sort_nodes(convert_float_to_float16(
        proto, keep_io_types=True, node_block_list=blocked or None,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(QDQ_OPS)))
    converted, steps = run_rewrites(converted, ["cast_round_trips"])
    onnx.save(converted, str(path))
    return steps


def _overflowing(proto: Any, feeds: list[dict] | None) -> list[str]:
    """Nodes with an output beyond the fp16 range on any feed."""
    import numpy as np
    import onnx

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
    found = session(probe)
    names = [o.name for o in found.get_outputs()]
    hot = set()
    for feed in feeds[:32]:
        for name, value in zip(names, found.run(names, feed)):
            value = np.asarray(value)
            if value.dtype.kind == "f" and value.size and np.nanmax(np.abs(value)) > FP16_MAX:
                hot.add(producer.get(name, name))
    return sorted(hot)


def float_nodes(proto: Any, layers: Any) -> list[str]:
    """ONNX nodes that keep TF layers (node names) in float: the nodes computing them, and
    the nodes reading their outputs (a quantized reader would quantize the tensor anyway)."""
    if not layers:
        return []
    wanted = set(layers)

    def computes(node: Any) -> bool:
        return node.name in wanted or any(o.split(":")[0] in wanted for o in node.output)

    producers = [n for n in proto.graph.node if computes(n)]
    outputs = {o for n in producers for o in n.output}
    readers = [n for n in proto.graph.node if outputs & set(n.input)]
    return sorted({n.name for n in producers + readers if n.name})


def _dynamic(proto: Any, path: Path, options: ExportOptions) -> list[dict]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(proto, str(path), weight_type=QuantType.QInt8,
                     nodes_to_exclude=float_nodes(proto, options.float_layers) or None)
    return []


class _Reader:
    """The calibration feeds as onnxruntime's CalibrationDataReader."""

    def __init__(self, feeds: list[dict]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # the interface asks for it; one pass is all it gets
        pass


def _static(proto: Any, path: Path, options: ExportOptions) -> list[dict]:
    """QDQ, per-channel int8 weights; activations uint8 (int8 mode) or int16 (int16x8)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    sixteen = options.quantize == "int16x8"
    if not sixteen and any(n.op_type == "DequantizeLinear" for n in proto.graph.node):
        return _fake_quantized(proto, path, options)
    with tempfile.TemporaryDirectory(prefix="tfopt-onnxq-") as work:
        prepared = Path(work) / "prepared.onnx"
        onnx.save(proto, str(Path(work) / "float.onnx"))
        with native_stderr_silenced():
            quant_pre_process(str(Path(work) / "float.onnx"), str(prepared),
                              skip_symbolic_shape=True)
            # after pre-processing: its fusions (MatMul+Add -> Gemm) rename nodes
            excluded = float_nodes(onnx.load(str(prepared)), options.float_layers)
            quantize_static(
                str(prepared), str(path), _Reader(options.calibration or []),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt16 if sixteen else QuantType.QUInt8,
                weight_type=QuantType.QInt8, nodes_to_exclude=excluded or None,
                extra_options={"UseQDQContribOps": sixteen})
    return []


def _fake_quantized(proto: Any, path: Path, options: ExportOptions) -> list[dict]:
    """A quantization-aware model's int8: its fake quants are QDQ pairs already (weights
    stored as int8, quantized_weights), which onnxruntime runs as int8 ops; calibration data,
    if given, quantizes the ops they leave float, and nothing else."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    produced = {o: n.op_type for n in proto.graph.node for o in n.output}
    left_float = [n.name for n in proto.graph.node if n.op_type in WEIGHTED_OPS and n.name
                  and not any(produced.get(i) == "DequantizeLinear" for i in n.input)]
    left_float = [n for n in left_float if n not in float_nodes(proto, options.float_layers)]
    step = {"step": "fake quants", "quantized_by_model": sum(
        n.op_type == "QuantizeLinear" for n in proto.graph.node), "left_float": len(left_float)}
    if not left_float or options.calibration is None:
        onnx.save(proto, str(path))
        return [step]
    with tempfile.TemporaryDirectory(prefix="tfopt-onnxq-") as work:
        onnx.save(proto, str(Path(work) / "fake_quantized.onnx"))
        with native_stderr_silenced():
            quantize_static(
                str(Path(work) / "fake_quantized.onnx"), str(path),
                _Reader(options.calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_quantize=left_float)
    step["calibrated"] = len(left_float)
    return [step]


# each writes the quantized model to path and returns the rewrite steps it ran
QUANTIZERS: dict[str, Callable[[Any, Path, ExportOptions], list[dict]]] = {
    "fp16": _fp16, "dynamic": _dynamic, "int8": _static, "int16x8": _static}
