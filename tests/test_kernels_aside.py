"""Kernels set aside while TF-side tools work: Grappler and tf2onnx see a placeholder in place
of each large kernel that only ops next to an activation read (Conv, MatMul, BatchMatMul,
Einsum, Gather), a kernel that a Reshape/Transpose moves is folded once in numpy (Grappler
drops the kernel), and the kernel comes back unchanged (for ONNX, with the layout tf2onnx
gives a constant kernel)."""
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

    aside = set_aside_kernels(build(graph))
    assert set(aside.kernels) == {"kernel"} and aside.kernels["kernel"].op == "Const"
    assert {n.name: n.op for n in aside.graph_def.node}["kernel"] == "Placeholder"
    assert KERNEL_ELEMENTS == 4096


def test_gathers_einsums_and_kernels_behind_a_reshape_are_set_aside_too():
    from test_passes import run_graph

    from tfopt.model import Model, TensorSpec
    from tfopt.passes import run_pipeline

    rng = np.random.default_rng(0)
    values = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in
              (("table", (100, 64)), ("fixed", (100, 64)), ("proj", (64, 64)), ("ek", (64, 64)))}

    def graph():
        ids = tf.compat.v1.placeholder(tf.int32, [None, 4], name="ids")
        x = tf.compat.v1.placeholder(tf.float32, [None, 64], name="x")
        table, fixed, proj, ek = (tf.constant(values[k], name=k) for k in values)
        gathered = tf.reduce_sum(tf.gather(table, ids), [1])
        constant_rows = tf.reduce_sum(tf.gather(fixed, [1, 2]), 0)  # a folder folds it
        moved = tf.reshape(tf.identity(proj), [1, 64, 64], name="moved")
        projected = tf.squeeze(tf.linalg.matmul(x[:, None, :], moved), 1)
        mixed = tf.einsum("bi,ij->bj", x, ek)
        tf.identity(gathered + constant_rows + projected + mixed, name="y")

    graph_def = build(graph)
    aside = set_aside_kernels(graph_def, fold_layout=True)
    # the reshape folded once, its result a kernel too (the matmul reads it)
    assert aside.keep == ["ek", "table", "moved"] and "fixed" not in aside.kernels
    assert "proj" in aside.kernels  # only the reshape read it: Grappler drops it
    nodes = {n.name: n for n in aside.graph_def.node}
    assert nodes["moved"].op == "Placeholder"
    assert nodes["proj"].attr["value"].tensor.tensor_shape.dim == []  # a scalar placeholder
    np.testing.assert_array_equal(tf.make_ndarray(aside.kernels["moved"].attr["value"].tensor),
                                  values["proj"].reshape(1, 64, 64))
    unfolded = set_aside_kernels(graph_def)  # no folding unless asked
    assert unfolded.keep == ["ek", "table"] and "proj" not in unfolded.kernels

    model = Model(graph_def, [TensorSpec("ids", "int32", (None, 4)),
                              TensorSpec("x", "float32", (None, 64))],
                  [TensorSpec("y", "float32", (None, 64))])
    optimized, _ = run_pipeline(model, ["grappler"])
    ops = {n.name: n.op for n in optimized.graph_def.node}
    assert ops["moved"] == "Const" and ops["table"] == "Const" and "proj" not in ops
    assert "Placeholder" not in {op for name, op in ops.items() if name not in ("ids", "x")}
    feed = {"ids:0": rng.integers(0, 100, (3, 4)).astype(np.int32),
            "x:0": rng.standard_normal((3, 64)).astype(np.float32)}
    np.testing.assert_allclose(run_graph(optimized.graph_def, feed, "y:0"),
                               run_graph(graph_def, feed, "y:0"), rtol=1e-5, atol=1e-5)


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


def test_grappler_sees_kernels_without_the_dimension_their_readers_contract():
    from tfopt.graph import hide_contracted_dims

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8], name="x")
        ids = tf.compat.v1.placeholder(tf.int32, [None], name="ids")
        kernels = {name: tf.compat.v1.placeholder(tf.float32, shape, name=name) for name, shape
                   in [("w", [8, 16]), ("wt", [16, 8]), ("table", [100, 8]),
                       ("ek", [8, 4, 16]), ("bias", [16])]}
        tf.matmul(x, kernels["w"], name="mm")
        tf.matmul(x, kernels["wt"], transpose_b=True, name="mmt")
        tf.gather(kernels["table"], ids, name="embed")
        tf.raw_ops.Einsum(inputs=[x, kernels["ek"]], equation="ab,bcd->acd", name="es")
        tf.add(tf.matmul(x, kernels["w"]), kernels["bias"], name="biased")  # Add needs all
    graph_def = graph.as_graph_def()
    assert hide_contracted_dims(graph_def, set(kernels)) == 4
    shapes = {n.name: [d.size for d in n.attr["shape"].shape.dim] for n in graph_def.node
              if n.name in kernels}
    assert shapes == {"w": [-1, 16], "wt": [16, -1], "table": [-1, 8], "ek": [-1, 4, 16],
                      "bias": [16]}
    with tf.Graph().as_default() as hidden:  # every reader's output shape is as it was
        tf.graph_util.import_graph_def(graph_def, name="")
    for name in ("mm", "mmt", "embed", "es"):
        assert hidden.get_tensor_by_name(f"{name}:0").shape.as_list() == \
            graph.get_tensor_by_name(f"{name}:0").shape.as_list(), name
