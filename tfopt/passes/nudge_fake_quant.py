"""Fake-quant ranges as TensorFlow nudges them, so a converter's own rounding lands on TF's
grid.

    FakeQuantWithMinMaxVars(x, min, max)            -> (x, nudged_min, nudged_max)
    FakeQuantWithMinMaxVarsPerChannel(x, min, max)  -> (x, nudged_min, nudged_max)
    FakeQuantWithMinMaxArgs(x; min, max)            -> (x; nudged_min, nudged_max)

TF moves a range in float32 so that zero falls on its grid. tf2onnx computes the zero point
in float64 with round-half-to-even and the TFLite converter with its own rounding, so a range
whose zero point falls on a half (a symmetric [-8, 8]) got a grid one step off at the clamp:
every saturated output differed by a step. A nudged range has an integral zero point that
every converter computes alike, and TF computes the same op from it. The nudged bounds come
from TF's op itself: it clamps the largest float32 values to them.
"""
from __future__ import annotations

import numpy as np

from tfopt.graph import (
    add_const,
    copy_graph,
    fake_quant_attrs,
    fake_quant_nodes,
    fake_quant_range,
    unique_name,
)
from tfopt.passes.base import PassContext, PassLog, register

FLOAT32_MAX = float(np.finfo(np.float32).max)


def nudged_range(op: str, low, high, num_bits: int, narrow_range: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """TF's nudged (min, max) of a fake-quant range, per channel for the per-channel op."""
    import tensorflow as tf

    quant = tf.quantization
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    if op == "FakeQuantWithMinMaxVarsPerChannel":
        probe = np.stack([np.full(low.shape, -FLOAT32_MAX, np.float32),
                          np.full(low.shape, FLOAT32_MAX, np.float32)])
        ends = quant.fake_quant_with_min_max_vars_per_channel(
            probe, low, high, num_bits=num_bits, narrow_range=narrow_range).numpy()
        return ends[0], ends[1]
    probe = np.array([-FLOAT32_MAX, FLOAT32_MAX], np.float32)
    if op == "FakeQuantWithMinMaxArgs":
        ends = quant.fake_quant_with_min_max_args(
            probe, float(low), float(high), num_bits=num_bits, narrow_range=narrow_range)
    else:
        ends = quant.fake_quant_with_min_max_vars(probe, low, high, num_bits=num_bits,
                                                  narrow_range=narrow_range)
    ends = ends.numpy()
    return ends[0], ends[1]


@register("nudge_fake_quant")
def nudge_fake_quant(graph_def, ctx: PassContext, log: PassLog):
    if not fake_quant_nodes(graph_def):
        return graph_def
    out = copy_graph(graph_def)
    nodes = {n.name: n for n in out.node}
    taken = set(nodes)
    for node in fake_quant_nodes(out):
        given = fake_quant_range(node, nodes)
        if isinstance(given, str):
            log.skip(node.name, given)
            continue
        low, high = nudged_range(node.op, *given, *fake_quant_attrs(node))
        if np.array_equal(low, given[0]) and np.array_equal(high, given[1]):
            continue
        if node.op == "FakeQuantWithMinMaxArgs":
            node.attr["min"].f, node.attr["max"].f = float(low), float(high)
        else:  # new constants: the given ones may be read elsewhere
            for port, (end, value) in enumerate((("nudged_min", low), ("nudged_max", high))):
                const = add_const(out, unique_name(f"{node.name}/{end}", taken), value)
                taken.add(const.name)
                node.input[1 + port] = const.name
        log.change("nudged", node=node.name, **_shown(given[0], given[1], low, high))
    return out


def _shown(low, high, nudged_low, nudged_high) -> dict:
    """A range for the report: its values, or its channel count when per channel."""
    if np.ndim(low):
        return {"channels": int(np.size(low))}
    return {"min": float(low), "max": float(high), "nudged_min": float(nudged_low),
            "nudged_max": float(nudged_high)}
