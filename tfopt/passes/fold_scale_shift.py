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

from tfopt.graph import (
    NORM_OPS,
    channels_first,
    const_value,
    node_name,
    set_const_value,
    unique_name,
)
from tfopt.passes.base import PassContext, PassLog, register
from tfopt.passes.pattern import (
    CONST,
    GraphView,
    OpTypePattern,
    Replacement,
    Skip,
    data_inputs,
    replace_matching,
)

LINEAR = "Conv2D|DepthwiseConv2dNative|Conv3D|Conv2DBackpropInput|MatMul"
STEP = "Mul|Add|AddV2|Sub|RealDiv"
NORM = "|".join(sorted(NORM_OPS))


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
    nchw = channels_first(linear)
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


def _norm_scale_shift(step, nodes) -> tuple[np.ndarray, np.ndarray] | Skip:
    refs = data_inputs(step)
    params = [nodes.get(node_name(r)) for r in refs[1:]]
    if not all(p is not None and p.op == "Const" for p in params):
        return Skip("batch-norm parameters are not constant")
    if step.attr["is_training"].b:
        return Skip("batch norm is in training mode")
    gamma, beta, mean, var = (const_value(p).astype(np.float64) for p in params[:4])
    eps = step.attr["epsilon"].f
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


@register("fold_scale_shift")
def fold_scale_shift(graph_def, ctx: PassContext, log: PassLog):
    return replace_matching(graph_def, PATTERNS, lambda found, view: _fold(found, view, ctx),
                            log, keep=ctx.inputs + ctx.outputs)


def _fold(found: dict, view: GraphView, ctx: PassContext) -> Replacement | Skip:
    nodes = view.nodes
    step, linear, bias = found["step"], found["linear"], found.get("bias")
    weights = nodes.get(node_name(data_inputs(linear)[1]))
    if weights is None or weights.op != "Const":
        return Skip(f"weights of {linear.name} are not constant")
    chain = [linear] + ([bias] if bias is not None else [])
    for node in chain:
        if node.name in ctx.protected:
            return Skip(f"{node.name} is a signature input or output")
        if len(view.readers.get(node.name, [])) != 1:
            return Skip(f"{node.name} has more than one consumer")
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
            return Skip(f"bias of {bias.name} is not per-channel")
        old_bias = vector
    if not np.issubdtype(kernel.dtype, np.floating):
        return Skip(f"weights of {linear.name} are not floating point")
    if step.op in NORM_OPS:
        result = _norm_scale_shift(step, nodes)
        if isinstance(result, Skip):
            return result
        scale, shift = result
        if any(ref.startswith(step.name + ":") and not ref.endswith(":0")
               for r in view.readers.get(step.name, []) for ref in r.input):
            return Skip("batch-norm statistics outputs are read")
    else:
        refs = data_inputs(step)
        const_pos = 1 if nodes[node_name(refs[1])].op == "Const" else 0
        value = _per_channel(const_value(nodes[node_name(refs[const_pos])]), rank, act_axis,
                             channels)
        if value is None:
            return Skip("constant is not per-channel (shape mismatch)")
        scale, shift = np.ones(channels), np.zeros(channels)
        if step.op == "Mul":
            scale = value
        elif step.op in ("Add", "AddV2"):
            shift = value
        elif step.op == "Sub":
            scale, shift = (np.ones(channels), -value) if const_pos == 1 else \
                (-np.ones(channels), value)
        elif const_pos == 1 and np.all(value != 0):  # RealDiv by a constant
            scale = 1.0 / value
        else:
            return Skip("division by a non-constant or by zero")
    dtype = kernel.dtype
    new_kernel = _scale_kernel(kernel.astype(np.float64), scale, linear.op, w_axis)
    new_bias = old_bias * scale + shift
    # the step node becomes BiasAdd(linear', bias'); it keeps its name, so readers need no change
    folded_weights = type(weights)()
    folded_weights.CopyFrom(weights)
    folded_weights.name = unique_name(f"{step.name}/folded_weights", nodes)
    set_const_value(folded_weights, new_kernel.astype(dtype))
    folded_bias = type(weights)()
    folded_bias.CopyFrom(weights)
    folded_bias.name = unique_name(f"{step.name}/folded_bias", nodes)
    set_const_value(folded_bias, new_bias.astype(dtype))
    new_linear = type(linear)()
    new_linear.CopyFrom(linear)
    new_linear.input[1] = folded_weights.name
    bias_add = type(step)(name=step.name, op="BiasAdd", input=[linear.name, folded_bias.name])
    bias_add.attr["T"].type = weights.attr["dtype"].type
    if act_axis != rank - 1:  # channels first; BiasAdd's "NCHW" means dim 1, for NCDHW too
        bias_add.attr["data_format"].s = b"NCHW"
    pattern = f"{linear.op}{'+BiasAdd' if bias is not None else ''}+{step.op}"
    return Replacement(nodes=[folded_weights, folded_bias, new_linear, bias_add],
                       dead=[bias.name] if bias is not None else [],
                       details={"pattern": pattern, "node": step.name})


def _scale_kernel(kernel: np.ndarray, scale: np.ndarray, op: str, axis: int) -> np.ndarray:
    if op == "DepthwiseConv2dNative":  # [H, W, in, multiplier]: output channel = in*mult + m
        return kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    shape = [1] * kernel.ndim
    shape[axis] = -1
    return kernel * scale.reshape(shape)
