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
from collections.abc import Callable

from tfopt.graph import channels_first, const_value, node_name, without_large_constants
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

_PAD = OpTypePattern("Pad|PadV2|MirrorPad", [OpTypePattern("*"), CONST], name="pad")
PATTERN = OpTypePattern("Conv2D|DepthwiseConv2dNative", [_PAD, CONST], name="conv")


def same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF's SAME padding (before, after) along one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _fold(found: dict, view: GraphView, shapes: Callable[[str], list | None]
          ) -> Replacement | Skip:
    pad, conv, nodes = found["pad"], found["conv"], view.nodes
    if conv.attr["padding"].s != b"VALID":
        return Skip(f"{conv.name} already pads ({conv.attr['padding'].s.decode()})")
    if pad.op == "MirrorPad":
        return Skip("reflect/symmetric padding has no convolution equivalent")
    if pad.op == "PadV2":
        value = nodes.get(node_name(data_inputs(pad)[2]))
        if value is None or value.op != "Const" or const_value(value).any():
            return Skip("pads with a non-zero value")
    if len({r.name for r in view.readers.get(pad.name, ())}) != 1:
        return Skip("the padded tensor has another consumer")
    pads = const_value(nodes[node_name(data_inputs(pad)[1])]).astype(int)
    spatial = (2, 3) if channels_first(conv) else (1, 2)
    if pads.shape != (4, 2) or any(pads[d].any() for d in range(4) if d not in spatial):
        return Skip("pads the batch or channel dimension")
    if (pads < 0).any():
        return Skip("negative paddings crop")
    new = type(conv)()
    new.CopyFrom(conv)
    new.input[0] = data_inputs(pad)[0]
    padding = "SAME" if _is_same(conv, pads, spatial, shapes(pad.name), nodes) else "EXPLICIT"
    new.attr["padding"].s = padding.encode()
    if padding == "EXPLICIT":
        new.attr["explicit_paddings"].list.i[:] = [int(p) for p in pads.reshape(-1)]
    return Replacement(nodes=[new], dead=[pad.name], details={
        "pattern": f"{pad.op}+{conv.op}", "node": conv.name, "padding": padding})


@register("fold_pad")
def fold_pad(graph_def, ctx: PassContext, log: PassLog):
    cache: dict = {}

    def shapes(pad: str) -> list | None:
        if not cache:  # one TF import of the graph, and only once a Pad matches
            cache.update(_input_shapes(graph_def, [n.name for n in graph_def.node
                                                   if n.op in ("Pad", "PadV2")]))
        return cache.get(pad)

    return replace_matching(graph_def, [PATTERN], lambda found, view: _fold(found, view, shapes),
                            log, keep=ctx.inputs + ctx.outputs)


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
    with graph.as_default():  # the weights' shapes, not their values
        tf.compat.v1.import_graph_def(without_large_constants(graph_def, 4096)[0], name="")
    shapes = {}
    for name in pad_names:
        shape = graph.get_operation_by_name(name).inputs[0].shape
        shapes[name] = None if shape.rank is None else shape.as_list()
    return shapes
