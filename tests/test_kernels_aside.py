"""Kernels set aside while TF-side tools work: Grappler and tf2onnx see a placeholder in place
of each large kernel that only a Conv/MatMul reads, and the kernel comes back unchanged
(for ONNX, with the layout tf2onnx gives a constant kernel)."""
from __future__ import annotations

import numpy as np
import onnx
import tensorflow as tf
from conftest import save_serving
from test_passes import build

import tfopt
from tfopt.graph import KERNEL_ELEMENTS, set_aside_kernels


def test_only_kernels_that_convs_and_matmuls_read_are_set_aside():
    rng = np.random.default_rng(0)

    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 16], name="x")
        kernel = tf.constant(rng.standard_normal((3, 3, 16, 32)).astype(np.float32),
                             name="kernel")
        shift = tf.constant(rng.standard_normal((8, 8, 32, 2)).astype(np.float32)[..., 0],
                            name="shift")  # 2048 elements: too small
        table = tf.constant(rng.standard_normal((64, 64, 2)).astype(np.float32),
                            name="table")  # large, but an Add reads it
        y = tf.nn.conv2d(x, tf.identity(kernel), 1, "SAME") + shift
        with tf.control_dependencies([kernel]):  # a control edge reads no value
            tf.identity(tf.reduce_sum(y) + tf.reduce_sum(table + 1.0), name="y")

    lifted, kernels = set_aside_kernels(build(graph))
    assert set(kernels) == {"kernel"} and kernels["kernel"].op == "Const"
    assert {n.name: n.op for n in lifted.node}["kernel"] == "Placeholder"
    assert KERNEL_ELEMENTS == 4096


def test_onnx_kernels_come_back_as_initializers_in_tf2onnx_layout(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((12, 12, 16), name="image")
    x = keras.layers.Conv2D(32, 3, padding="same")(image)  # 4608-element kernel
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=16)(x)  # 4608 elements
    x = keras.layers.GlobalAveragePooling2D()(x)
    save_serving(keras.Model(image, keras.layers.Dense(10)(x)), str(tmp_path / "m"))
    result = tfopt.freeze(tmp_path / "m", tmp_path / "out", targets=["onnx"])
    assert result.exit_code == 0, result.artifact("onnx").error
    proto = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert [i.name for i in proto.graph.input] == ["image"]
    initializers = {i.name for i in proto.graph.initializer}
    layout_ops = [n for n in proto.graph.node if n.op_type in ("Transpose", "Reshape")
                  and n.input[0] in initializers]
    assert not layout_ops  # applied to the kernels, as tf2onnx does to constants
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 2 and {"MatMul", "Gemm"} & set(ops), ops
