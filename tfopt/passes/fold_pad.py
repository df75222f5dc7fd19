"""Fold a constant zero Pad into the VALID convolution after it.

    Conv2D|DepthwiseConv2dNative(Pad|PadV2(x, Const paddings[, 0]), weights, padding=VALID)
      -> Conv2D|DepthwiseConv2dNative(x, weights, padding=SAME)       if the pads are SAME's
      -> Conv2D|DepthwiseConv2dNative(x, weights, padding=EXPLICIT)   otherwise

SAME is what every backend runs without a pad op (Keras' ZeroPadding2D before a strided conv
is usually exactly SAME); TF, tf2onnx and the TFLite converter all take EXPLICIT, the TFLite
converter by putting a PAD back. Written here because Grappler never folds a Pad.
"""
from __future__ import annotations

import math

from tfopt.graph import const_value, consumers, keep_nodes, node_name, reachable
from tfopt.passes.base import PassContext, PassLog, register
from tfopt.passes.pattern import CONST, OpTypePattern, data_inputs, match

_PAD = OpTypePattern("Pad|PadV2|MirrorPad", [OpTypePattern("*"), CONST], name="pad")
PATTERN = OpTypePattern("Conv2D|DepthwiseConv2dNative", [_PAD, CONST], name="conv")


def same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF's SAME padding (before, after) along one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _reason(pad, conv, nodes, readers) -> str | None:
    if conv.attr["padding"].s != b"VALID":
        return f"{conv.name} already pads ({conv.attr['padding'].s.decode()})"
    if pad.op == "MirrorPad":
        return "reflect/symmetric padding has no convolution equivalent"
    if pad.op == "PadV2":
        value = nodes.get(node_name(data_inputs(pad)[2]))
        if value is None or value.op != "Const" or const_value(value).any():
            return "pads with a non-zero value"
    if len({r.name for r in readers.get(pad.name, ())}) != 1:
        return "the padded tensor has another consumer"
    return None


@register("fold_pad")
def fold_pad(graph_def, ctx: PassContext, log: PassLog):
    nodes = {n.name: n for n in graph_def.node}
    readers = consumers(graph_def)
    found = []
    for node in graph_def.node:
        hit = match(PATTERN, node, nodes)
        if hit is None:
            continue
        reason = _reason(hit["pad"], node, nodes, readers)
        if reason:
            log.skip(node.name, reason)
            continue
        pads = const_value(nodes[node_name(data_inputs(hit["pad"])[1])]).astype(int)
        channels_first = conv_layout(node)
        spatial = (2, 3) if channels_first else (1, 2)
        if pads.shape != (4, 2) or any(pads[d].any() for d in range(4) if d not in spatial):
            log.skip(node.name, "pads the batch or channel dimension")
            continue
        if (pads < 0).any():
            log.skip(node.name, "negative paddings crop")
            continue
        found.append((node, hit["pad"], pads, spatial))
    if not found:
        return graph_def
    shapes = _input_shapes(graph_def, [pad.name for _, pad, _, _ in found])
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    by_name = {n.name: n for n in out.node}
    for conv, pad, pads, spatial in found:
        new = by_name[conv.name]
        new.input[0] = data_inputs(pad)[0]
        padding = "SAME" if _is_same(conv, pads, spatial, shapes.get(pad.name), nodes) \
            else "EXPLICIT"
        new.attr["padding"].s = padding.encode()
        if padding == "EXPLICIT":
            new.attr["explicit_paddings"].list.i[:] = [int(p) for p in pads.reshape(-1)]
        log.change("folded", pattern=f"{pad.op}+{conv.op}", node=conv.name, padding=padding)
    keep = reachable(out, ctx.outputs) | set(ctx.inputs)
    log.removed["folded_constants"] += sum(1 for n in out.node if n.name not in keep)
    return keep_nodes(out, keep)


def conv_layout(conv) -> bool:
    """Whether a conv is channels-first."""
    return conv.attr["data_format"].s.startswith(b"NC") if "data_format" in conv.attr else False


def _is_same(conv, pads, spatial, shape, nodes) -> bool:
    if shape is None or any(shape[d] is None for d in spatial):
        return False
    kernel = const_value(nodes[node_name(data_inputs(conv)[1])]).shape
    strides = list(conv.attr["strides"].list.i) or [1, 1, 1, 1]
    dilations = list(conv.attr["dilations"].list.i) or [1, 1, 1, 1]
    return all(tuple(pads[d]) == same_pads(shape[d], kernel[i], strides[d], dilations[d])
               for i, d in enumerate(spatial))


def _input_shapes(graph_def, pad_names: list[str]) -> dict:
    """Static shapes of the Pads' inputs, from TF's shape inference."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    shapes = {}
    for name in pad_names:
        shape = graph.get_operation_by_name(name).inputs[0].shape
        shapes[name] = None if shape.rank is None else shape.as_list()
    return shapes
