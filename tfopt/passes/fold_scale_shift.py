"""Fold batch norms and constant scale/shift chains into the linear op before them.

    Conv2D|DepthwiseConv2dNative|Conv3D|Conv2DBackpropInput|MatMul (constant weights)
      [-> BiasAdd|Add|AddV2 (constant)]
      -> Mul|Add|AddV2|Sub|RealDiv (constant) | FusedBatchNorm* (inference mode)

becomes the linear op with scaled weights followed by one BiasAdd, the form every backend
fuses with the activation after it. Chains fold one step at a time in topological order.
Written here because Grappler only folds into Conv2D/MatMul when the scale follows the op
directly, never through a bias or into depthwise/transposed convs, and TFLite/tf2onnx differ.
"""
from __future__ import annotations

import numpy as np

from tfopt.graph import (const_value, consumers, keep_nodes, node_name, reachable, set_const_value,
                         topological_order, unique_name)
from tfopt.passes.base import PassContext, PassLog, register
from tfopt.passes.pattern import CONST, OpTypePattern, data_inputs, match

LINEAR = "Conv2D|DepthwiseConv2dNative|Conv3D|Conv2DBackpropInput|MatMul"
STEP = "Mul|Add|AddV2|Sub|RealDiv"
NORM = "FusedBatchNorm|FusedBatchNormV2|FusedBatchNormV3"


# every linear op takes its weights as input 1 (Conv2DBackpropInput: sizes, filter, input)
_LINEAR = OpTypePattern(LINEAR, name="linear")
_BIASED = OpTypePattern("BiasAdd|Add|AddV2", [_LINEAR, CONST], name="bias")
PATTERNS = (OpTypePattern(STEP, [_BIASED, CONST], name="step"),
            OpTypePattern("Sub", [CONST, _BIASED], name="step"),
            OpTypePattern(NORM, [_BIASED], name="step"),
            OpTypePattern(STEP, [_LINEAR, CONST], name="step"),
            OpTypePattern("Sub", [CONST, _LINEAR], name="step"),
            OpTypePattern(NORM, [_LINEAR], name="step"))


def _channel_layout(linear):
    """(activation rank, channel axis of the activation, output-channel axis of the weights)."""
    nchw = linear.attr["data_format"].s.decode().startswith("NC") if "data_format" in \
        linear.attr else False
    if linear.op == "MatMul":
        return 2, 1, 0 if linear.attr["transpose_b"].b else 1
    rank = 5 if linear.op == "Conv3D" else 4
    weight_axis = {"Conv2D": 3, "Conv3D": 4, "DepthwiseConv2dNative": 3,
                   "Conv2DBackpropInput": 2}[linear.op]
    return rank, 1 if nchw else rank - 1, weight_axis


def _per_channel(value: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """value as a [channels] vector if it broadcasts along the channel axis only, else None."""
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1) if value.size > 1 else value.reshape(()),
                           (channels,)).astype(np.float64)


def _norm_scale_shift(step, nodes) -> tuple[np.ndarray, np.ndarray] | str:
    refs = data_inputs(step)
    params = [nodes.get(node_name(r)) for r in refs[1:]]
    if not all(p is not None and p.op == "Const" for p in params):
        return "batch-norm parameters are not constant"
    if step.attr["is_training"].b:
        return "batch norm is in training mode"
    gamma, beta, mean, var = (const_value(p).astype(np.float64) for p in params[:4])
    eps = step.attr["epsilon"].f
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


@register("fold_scale_shift")
def fold_scale_shift(graph_def, ctx: PassContext, log: PassLog):
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    nodes = {n.name: n for n in out.node}
    readers = consumers(out)
    for step in topological_order(out):
        found = next((m for m in (match(p, step, nodes) for p in PATTERNS) if m), None)
        if found:
            reason = _fold(found, nodes, readers, ctx, out, log)
            if reason:
                log.skip(step.name, reason)
    if not log.changes:
        return graph_def
    # the replaced weights, biases and intermediate constants are now unread
    keep = reachable(out, ctx.outputs) | set(ctx.inputs)
    log.removed["folded_constants"] += sum(1 for n in graph_def.node if n.name not in keep)
    return keep_nodes(out, keep)


def _fold(found, nodes, readers, ctx, graph_def, log) -> str | None:
    step, linear, bias = found["step"], found["linear"], found.get("bias")
    weights = nodes.get(node_name(data_inputs(linear)[1]))
    if weights is None or weights.op != "Const":
        return f"weights of {linear.name} are not constant"
    chain = [linear] + ([bias] if bias is not None else [])
    for node in chain:
        if node.name in ctx.protected:
            return f"{node.name} is a signature input or output"
        if len(readers.get(node.name, [])) != 1:
            return f"{node.name} has more than one consumer"
    rank, act_axis, w_axis = _channel_layout(linear)
    kernel = const_value(weights)
    channels = kernel.shape[w_axis] if linear.op != "DepthwiseConv2dNative" else \
        kernel.shape[2] * kernel.shape[3]
    old_bias = np.zeros(channels)
    if bias is not None:
        bias_const = nodes[node_name(next(r for r in data_inputs(bias) if
                                          nodes[node_name(r)].op == "Const"))]
        vector = _per_channel(const_value(bias_const), rank, act_axis, channels)
        if vector is None:
            return f"bias of {bias.name} is not per-channel"
        old_bias = vector
    if not np.issubdtype(kernel.dtype, np.floating):
        return f"weights of {linear.name} are not floating point"
    if step.op in NORM.split("|"):
        result = _norm_scale_shift(step, nodes)
        if isinstance(result, str):
            return result
        scale, shift = result
        if any(ref.startswith(step.name + ":") and not ref.endswith(":0")
               for r in readers.get(step.name, []) for ref in r.input):
            return "batch-norm statistics outputs are read"
    else:
        refs = data_inputs(step)
        const_pos = 1 if nodes[node_name(refs[1])].op == "Const" else 0
        value = _per_channel(const_value(nodes[node_name(refs[const_pos])]), rank, act_axis, channels)
        if value is None:
            return "constant is not per-channel (shape mismatch)"
        scale, shift = np.ones(channels), np.zeros(channels)
        if step.op == "Mul":
            scale = value
        elif step.op in ("Add", "AddV2"):
            shift = value
        elif step.op == "Sub":
            scale, shift = (np.ones(channels), -value) if const_pos == 1 else (-np.ones(channels),
                                                                              value)
        elif const_pos == 1 and np.all(value != 0):  # RealDiv by a constant
            scale = 1.0 / value
        else:
            return "division by a non-constant or by zero"
    dtype = kernel.dtype
    new_kernel = _scale_kernel(kernel.astype(np.float64), scale, linear.op, w_axis)
    new_bias = old_bias * scale + shift
    # the step node becomes BiasAdd(linear', bias'); it keeps its name, so readers need no change
    weights_copy = graph_def.node.add()
    weights_copy.CopyFrom(weights)
    weights_copy.name = unique_name(f"{step.name}/folded_weights", nodes)
    set_const_value(weights_copy, new_kernel.astype(dtype))
    nodes[weights_copy.name] = weights_copy
    bias_node = graph_def.node.add()
    bias_node.CopyFrom(weights)
    bias_node.name = unique_name(f"{step.name}/folded_bias", nodes)
    set_const_value(bias_node, new_bias.astype(dtype))
    nodes[bias_node.name] = bias_node
    refs = list(linear.input)
    refs[1] = weights_copy.name
    del linear.input[:]
    linear.input.extend(refs)
    step_name, step_op = step.name, step.op
    step.Clear()
    step.name, step.op = step_name, "BiasAdd"
    step.input.extend([linear.name, bias_node.name])
    step.attr["T"].type = weights.attr["dtype"].type
    if act_axis != rank - 1:  # channels first; BiasAdd's "NCHW" means dim 1, for NCDHW too
        step.attr["data_format"].s = b"NCHW"
    readers[linear.name] = [step]
    log.change("folded", pattern=f"{linear.op}{'+BiasAdd' if bias is not None else ''}+{step_op}",
               node=step_name)
    return None


def _scale_kernel(kernel: np.ndarray, scale: np.ndarray, op: str, axis: int) -> np.ndarray:
    if op == "DepthwiseConv2dNative":  # [H, W, in, multiplier]: output channel = in*mult + m
        return kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    shape = [1] * kernel.ndim
    shape[axis] = -1
    return kernel * scale.reshape(shape)
