"""fold_scale_shift on tiny hand-built graphs: every variant folds with parity; the
negative cases are skipped with their reason and left intact."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from test_passes import build, run_graph

from tfopt.passes import REGISTRY, PassContext, PassLog

RNG = np.random.default_rng(0)


def const(*shape):
    return tf.constant(RNG.standard_normal(shape).astype(np.float32))


def positive(*shape):
    return tf.constant(RNG.uniform(0.5, 1.5, shape).astype(np.float32))


def fused_bn(x, channels):
    y, *_ = tf.compat.v1.nn.fused_batch_norm(x, positive(channels), const(channels),
                                             const(channels), positive(channels),
                                             is_training=False, epsilon=1e-3)
    return y


def decomposed_bn(x, channels):
    # Keras 3's form once constants fold: x * scale + shift
    return x * positive(channels) + const(channels)


def conv(x):
    return tf.nn.conv2d(x, const(3, 3, 2, 4), 1, "SAME")


def depthwise(x):
    return tf.nn.depthwise_conv2d(x, const(3, 3, 2, 2), [1, 1, 1, 1], "SAME")


def transposed(x):
    return tf.nn.conv2d_transpose(x, const(3, 3, 4, 2), [1, 10, 10, 4], 2, "SAME")


def conv3d(x):
    return tf.nn.conv3d(tf.reshape(x, [1, 1, 5, 5, 2]), const(1, 3, 3, 2, 4),
                        [1, 1, 1, 1, 1], "SAME")


def dense(x):
    return tf.matmul(tf.reshape(x, [1, 50]), const(50, 4))


LINEAR = {"conv": (conv, 4), "depthwise": (depthwise, 4), "transposed": (transposed, 4),
          "conv3d": (conv3d, 4), "dense": (dense, 4)}
NORMS = {"fused": fused_bn, "decomposed": decomposed_bn}


def fold(graph_fn, outputs=("y",)):
    graph_def = build(graph_fn)
    log = PassLog()
    folded = REGISTRY["fold_scale_shift"](graph_def, PassContext(("x",), outputs), log)
    return graph_def, folded, log


def assert_same_outputs(before, after):
    feed = {"x:0": RNG.standard_normal((1, 5, 5, 2)).astype(np.float32)}
    np.testing.assert_allclose(run_graph(after, feed, "y:0"), run_graph(before, feed, "y:0"),
                               rtol=1e-4, atol=1e-5)


# FusedBatchNorm takes 4-D inputs only, so it never follows Conv3D or a Dense
VARIANTS = [(linear, norm) for linear in LINEAR for norm in NORMS
            if not (norm == "fused" and linear in ("conv3d", "dense"))]


@pytest.mark.parametrize("linear,norm", VARIANTS, ids=[f"{a}-{b}" for a, b in VARIANTS])
@pytest.mark.parametrize("biased", [False, True], ids=["no_bias", "bias"])
def test_batch_norm_folds(linear, norm, biased):
    make, channels = LINEAR[linear]

    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 5, 5, 2], name="x")
        y = make(x)
        if biased:
            y = tf.nn.bias_add(y, const(channels))
        tf.nn.relu(NORMS[norm](y, channels), name="y")

    before, after, log = fold(graph)
    ops = [n.op for n in after.node]
    assert not {"FusedBatchNormV3", "Mul", "AddV2", "Rsqrt"} & set(ops), ops
    assert ops.count("BiasAdd") == 1 and not log.skipped
    assert_same_outputs(before, after)


def test_scale_shift_chain_with_sub_div_and_constant_first():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 5, 5, 2], name="x")
        y = conv(x)
        y = (2.0 * y - const(4)) / positive(1, 1, 1, 4)
        y = const(4) - y  # constant on the left of Sub negates the scale
        tf.nn.relu6(y, name="y")

    before, after, log = fold(graph)
    ops = [n.op for n in after.node]
    assert ops.count("BiasAdd") == 1 and not {"Mul", "Sub", "RealDiv"} & set(ops)
    assert next(c["pattern"] for c in log.changes) == "Conv2D+Mul"
    assert_same_outputs(before, after)


def test_conv_output_read_twice_is_skipped():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 5, 5, 2], name="x")
        y = conv(x)
        tf.add(y * positive(4), tf.nn.relu(y), name="y")

    before, after, log = fold(graph)
    assert "Mul" in [n.op for n in after.node]
    assert any("more than one consumer" in s["reason"] for s in log.skipped)
    assert_same_outputs(before, after)


def test_non_constant_weights_are_skipped():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 5, 5, 2], name="x")
        w = tf.compat.v1.placeholder_with_default(const(3, 3, 2, 4), [3, 3, 2, 4])
        tf.identity(tf.nn.conv2d(x, w, 1, "SAME") * positive(4), name="y")

    _before, after, log = fold(graph)
    assert "Mul" in [n.op for n in after.node]
    assert any("not constant" in s["reason"] for s in log.skipped)


def test_per_tensor_shape_mismatch_is_skipped():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 5, 5, 2], name="x")
        # varies along width, not along channels: cannot go into the weights
        tf.identity(conv(x) * positive(1, 1, 5, 1), name="y")

    before, after, log = fold(graph)
    assert "Mul" in [n.op for n in after.node]
    assert any("shape mismatch" in s["reason"] for s in log.skipped)
    assert_same_outputs(before, after)


@pytest.mark.parametrize("rank", [4, 5])
def test_channels_first_bias_add_says_nchw(rank):
    """TF's CPU kernels cannot run channels-first convs, so check the rewrite itself."""
    kernel = RNG.standard_normal((3,) * (rank - 2) + (2, 4)).astype(np.float32)
    scale = RNG.uniform(0.5, 1.5, 4).astype(np.float32)

    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 2] + [5] * (rank - 2), name="x")
        if rank == 4:
            y = tf.nn.conv2d(x, kernel, 1, "SAME", data_format="NCHW")
        else:
            y = tf.nn.conv3d(x, kernel, [1] * 5, "SAME", data_format="NCDHW")
        tf.identity(y * tf.constant(scale.reshape(4, *[1] * (rank - 2))), name="y")

    _, after, log = fold(graph)
    assert not log.skipped
    nodes = {n.name: n for n in after.node}
    bias_add = next(n for n in after.node if n.op == "BiasAdd")
    assert bias_add.attr["data_format"].s == b"NCHW"
    conv = nodes[bias_add.input[0]]
    folded = tf.make_ndarray(nodes[conv.input[1]].attr["value"].tensor)
    np.testing.assert_allclose(folded, kernel * scale, rtol=1e-6)
