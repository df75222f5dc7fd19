"""Fake-quant ops in the forms tf2onnx turns into QuantizeLinear/DequantizeLinear pairs.

    FakeQuant*(Const)                           -> Const (the fake-quantized weights)
    FakeQuantWithMinMaxVars(x; narrow, [a, b])  -> FakeQuantWithMinMaxVars(
                                                       ClipByValue(x, a, b); [a - step, b])

tf2onnx converts per-tensor, 8-bit, full-range fake quants only. Weights are fake-quantized
here by TF itself, so they hold TF's grid values (onnxruntime's quantizer then stores them as
int8 on that grid). A narrow range [a, b] (nudged: run after nudge_fake_quant) is the full
range one step wider at the bottom, clipped to [a, b]: the same grid and the same clamp.
"""
from __future__ import annotations

import numpy as np

from tfopt.graph import (
    add_const,
    const_node,
    const_value,
    copy_graph,
    fake_quant_attrs,
    fake_quant_nodes,
    fake_quant_range,
    node_name,
    unique_name,
)
from tfopt.passes.base import PassContext, PassLog, register


@register("fake_quant_for_onnx")
def fake_quant_for_onnx(graph_def, ctx: PassContext, log: PassLog):
    import tensorflow as tf

    if not fake_quant_nodes(graph_def):
        return graph_def
    out = copy_graph(graph_def)
    nodes = {n.name: n for n in out.node}
    taken = set(nodes)
    for node in fake_quant_nodes(out):
        given = fake_quant_range(node, nodes)
        if isinstance(given, str):
            log.skip(node.name, f"{given}; tf2onnx converts constant ranges only")
            continue
        num_bits, narrow = fake_quant_attrs(node)
        source = nodes.get(node_name(node.input[0]))
        if source is not None and source.op == "Const":
            value = _fake_quantized(tf, node.op, const_value(source), *given, num_bits, narrow)
            if num_bits == 8 and _signed_grid(*given, narrow):
                _quantize_and_dequantize(out, node, value, given, narrow, taken)
                log.change("rewritten", node=node.name, pattern="FakeQuant(Const) -> "
                           "QuantizeAndDequantizeV2(Const on its grid), signed int8")
            else:
                node.CopyFrom(const_node(node.name, value))
                log.change("folded", node=node.name, pattern="FakeQuant(Const) -> Const",
                           note="a fake-quantized weight whose grid is not symmetric int8 is "
                                "stored as float; onnxruntime re-quantizes it per tensor")
            continue
        if node.op == "FakeQuantWithMinMaxVarsPerChannel":
            log.skip(node.name, "a per-channel fake quant of an activation: tf2onnx converts "
                                "per-tensor ones only")
            continue
        if num_bits != 8:
            log.skip(node.name, f"{num_bits}-bit: tf2onnx converts 8-bit fake quants only")
            continue
        if narrow:
            _widen(out, node, given, taken)
            log.change("widened", node=node.name,
                       pattern="narrow FakeQuant -> FakeQuant(ClipByValue), one step wider")
    return out


def _fake_quantized(tf, op: str, value, low, high, num_bits: int, narrow: bool) -> np.ndarray:
    quant = tf.quantization
    if op == "FakeQuantWithMinMaxVarsPerChannel":
        result = quant.fake_quant_with_min_max_vars_per_channel(
            value, low, high, num_bits=num_bits, narrow_range=narrow)
    elif op == "FakeQuantWithMinMaxArgs":
        result = quant.fake_quant_with_min_max_args(value, float(low), float(high),
                                                    num_bits=num_bits, narrow_range=narrow)
    else:
        result = quant.fake_quant_with_min_max_vars(value, low, high, num_bits=num_bits,
                                                    narrow_range=narrow)
    return result.numpy()


def _signed_grid(low, high, narrow: bool) -> bool:
    """Whether a nudged 8-bit range is signed int8's grid with zero point 0 (the form tf2onnx's
    per-axis QuantizeLinear takes), in every channel."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    step = (high - low) / (254 if narrow else 255)
    return bool(np.all(step > 0) and np.all(np.abs(-low / step - (127 if narrow else 128))
                                            < 1e-3))


def _quantize_and_dequantize(graph_def, node, value, given, narrow: bool, taken: set[str]
                             ) -> None:
    """node becomes a range-given signed QuantizeAndDequantizeV2 of the grid values, per axis
    over the last dimension (TF's channels; a per-tensor range repeated: TF's shape check
    wants a scalar range without an axis, and tf2onnx a vector)."""
    channels = np.shape(value)[-1]
    low, high = (np.broadcast_to(np.asarray(v, np.float32), (channels,)).copy() for v in given)
    names = []
    for part, array in (("grid", value), ("min", low), ("max", high)):
        const = add_const(graph_def, unique_name(f"{node.name}/{part}", taken), array)
        taken.add(const.name)
        names.append(const.name)
    node.ClearField("input")
    node.ClearField("attr")
    node.op = "QuantizeAndDequantizeV2"
    node.input.extend(names)
    node.attr["T"].type = 1  # DT_FLOAT
    node.attr["signed_input"].b = node.attr["range_given"].b = True
    node.attr["narrow_range"].b = narrow
    node.attr["num_bits"].i = 8
    node.attr["round_mode"].s = b"HALF_TO_EVEN"
    node.attr["axis"].i = np.ndim(value) - 1


def _widen(graph_def, node, given, taken: set[str]) -> None:
    low, high = (np.float32(v) for v in given)
    step = (high - low) / np.float32(2 ** fake_quant_attrs(node)[0] - 2)
    ends = [add_const(graph_def, unique_name(f"{node.name}/{end}", taken), value)
            for end, value in (("clip_min", low), ("clip_max", high))]
    taken.update(e.name for e in ends)
    clip = graph_def.node.add(name=unique_name(f"{node.name}/clip", taken), op="ClipByValue",
                              input=[node.input[0], ends[0].name, ends[1].name])
    clip.attr["T"].type = 1  # DT_FLOAT: fake quants take float32 only
    taken.add(clip.name)
    node.input[0] = clip.name
    node.attr["narrow_range"].b = False
    if node.op == "FakeQuantWithMinMaxArgs":
        node.attr["min"].f = float(low - step)
        return
    wider = add_const(graph_def, unique_name(f"{node.name}/widened_min", taken),
                      np.float32(low - step))
    taken.add(wider.name)
    node.input[1] = wider.name
