"""fold_pad and dedupe alone, on tiny hand-built graphs, with parity."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from test_passes import build, run_graph

from tfopt.passes import REGISTRY, PassContext, PassLog
from tfopt.passes.fold_pad import PATTERN, same_pads
from tfopt.passes.pattern import OpTypePattern, can_match

RNG = np.random.default_rng(0)
X = RNG.standard_normal((1, 10, 10, 3)).astype(np.float32)


def run_pass(name, graph_def):
    log = PassLog()
    return REGISTRY[name](graph_def, PassContext(("x",), ("y",)), log), log


def padded_conv(pads, stride=2, depthwise=False, pad_value=None, extra_reader=False):
    kernel = RNG.standard_normal((3, 3, 3, 1 if depthwise else 4)).astype(np.float32)

    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [None, 10, 10, 3], name="x")
        padded = tf.pad(x, pads) if pad_value is None else \
            tf.pad(x, pads, constant_values=pad_value)
        if depthwise:
            y = tf.nn.depthwise_conv2d(padded, kernel, [1, stride, stride, 1], "VALID")
        else:
            y = tf.nn.conv2d(padded, kernel, stride, "VALID")
        if extra_reader:
            y = tf.reduce_sum(y) + tf.reduce_sum(padded)
        tf.identity(y, name="y")
    return build(graph)


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("pads, padding", [
    ([[0, 0], [0, 1], [0, 1], [0, 0]], "SAME"),  # Keras ZeroPadding2D before a stride-2 conv
    ([[0, 0], [3, 1], [2, 2], [0, 0]], "EXPLICIT"),
])
def test_zero_pad_folds_into_the_conv(depthwise, pads, padding):
    before = padded_conv(pads, depthwise=depthwise)
    after, log = run_pass("fold_pad", before)
    assert not {"Pad", "PadV2"} & {n.op for n in after.node}
    assert [c["padding"] for c in log.changes] == [padding]
    np.testing.assert_allclose(run_graph(after, {"x:0": X}, "y:0"),
                               run_graph(before, {"x:0": X}, "y:0"), atol=1e-5)


@pytest.mark.parametrize("kwargs, reason", [
    (dict(pad_value=1.0), "non-zero value"),
    (dict(extra_reader=True), "another consumer"),
])
def test_pad_that_cannot_fold_is_skipped_with_its_reason(kwargs, reason):
    before = padded_conv([[0, 0], [1, 1], [1, 1], [0, 0]], **kwargs)
    after, log = run_pass("fold_pad", before)
    assert after is before and reason in log.skipped[0]["reason"]


def test_replace_matching_tries_only_patterns_whose_ops_the_graph_has():
    assert can_match(PATTERN, {"Conv2D", "PadV2", "Const", "Placeholder"})
    assert not can_match(PATTERN, {"Conv2D", "Const", "Placeholder"})  # no pad: skipped
    assert can_match(OpTypePattern("*"), set())


def test_same_pads_match_tensorflow():
    assert same_pads(96, 3, 2, 1) == (0, 1)
    assert same_pads(64, 7, 2, 1) == (2, 3)
    assert same_pads(10, 3, 1, 2) == (2, 2)


def test_dedupe_merges_identical_constants_and_nodes():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [2], name="x")
        a = tf.nn.relu(x * tf.constant(2.0))
        b = tf.nn.relu(x * tf.constant(2.0))  # the same computation, other names
        c = x * tf.constant(3.0)  # a different constant: kept
        tf.identity(a + b + c, name="y")

    before = build(graph)
    after, log = run_pass("dedupe", before)
    ops = [n.op for n in after.node]
    assert ops.count("Relu") == 1 and ops.count("Mul") == 2 and ops.count("Const") == 2
    assert log.removed["duplicates"] == 3
    feed = {"x:0": np.array([1.0, -2.0], np.float32)}
    np.testing.assert_allclose(run_graph(after, feed, "y:0"), run_graph(before, feed, "y:0"))


def test_dedupe_compares_constants_by_value_not_by_encoding():
    def graph():
        x = tf.compat.v1.placeholder(tf.int32, [], name="x")
        tf.identity(x + tf.constant(12) + tf.constant(12) + tf.constant(13), name="y")

    before = build(graph)
    consts = [n for n in before.node if n.op == "Const"]
    # TF writes a scalar as int_val; a folder may write the same number as tensor_content
    consts[1].attr["value"].tensor.ClearField("int_val")
    consts[1].attr["value"].tensor.tensor_content = np.int32(12).tobytes()
    after, log = run_pass("dedupe", before)
    assert [n.op for n in after.node].count("Const") == 2 and log.removed["duplicates"] == 1
    feed = {"x:0": np.int32(1)}
    assert run_graph(after, feed, "y:0") == run_graph(before, feed, "y:0") == 38


def test_dedupe_never_merges_random_ops():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [2], name="x")
        tf.identity(x + tf.random.uniform([2]) + tf.random.uniform([2]), name="y")

    before = build(graph)
    after, _log = run_pass("dedupe", before)
    assert [n.op for n in after.node].count("RandomUniform") == 2
