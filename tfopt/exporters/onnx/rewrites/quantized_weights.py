"""QuantizeLinear(constant) -> the quantized integer constant, which its DequantizeLinear
reads: a fake-quantized weight is stored as int8 on its grid instead of as float32.

tfopt's `fake_quant_for_onnx` gives tf2onnx a weight's fake quant as a QuantizeLinear of its
grid values; onnxruntime folds that pair only when it loads the model, and onnxslim and
onnxoptimizer fold no QuantizeLinear (its result is not float), so the file kept 4 bytes per
weight. Values on the grid quantize exactly: round-half-to-even never meets a tie there.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tfopt.exporters.onnx.graph import OnnxGraph
from tfopt.exporters.onnx.rewrites.registry import register_rewrite
from tfopt.passes.base import PassLog

INTEGER_TYPES = {"int8": (-128, 127), "uint8": (0, 255)}


def quantized(value: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int
              ) -> np.ndarray:
    """ONNX QuantizeLinear on numpy arrays (per tensor, or per axis with 1-D scales)."""
    if scale.ndim == 1:
        shape = [1] * value.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    low, high = INTEGER_TYPES[zero_point.dtype.name]
    values = np.rint(value.astype(np.float64) / scale.astype(np.float64)) + zero_point
    return np.clip(values, low, high).astype(zero_point.dtype)


@register_rewrite("quantized_weights", min_opset=13, sees_kernels=False)
def quantized_weights(proto: Any, log: PassLog) -> Any:
    from onnx import numpy_helper

    graph = OnnxGraph(proto)
    initializers = graph.initializers
    folded: set[int] = set()
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in initializers:
            continue
        if len(node.input) < 3 or node.input[2] not in graph.constants:
            log.skip(node.name, "no zero point: its integer type is not stated")
            continue
        value, scale, zero_point = (graph.constants[name] for name in node.input[:3])
        if zero_point.dtype.name not in INTEGER_TYPES:
            log.skip(node.name, f"{zero_point.dtype.name} zero point: int8 and uint8 only")
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        integers = quantized(value, scale, zero_point, axis)
        proto.graph.initializer.append(numpy_helper.from_array(integers, node.output[0]))
        folded.add(id(node))
        log.change("folded", node=node.name, tensor=node.input[0], dtype=integers.dtype.name)
    if folded:
        graph.replace({}, folded)
    return proto
