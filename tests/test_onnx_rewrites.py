"""Each ONNX rewrite alone, on a tiny hand-built ONNX graph: what it changes, what it skips
and why, and that onnxruntime computes the same before and after."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfopt.exporters.onnx.rewrites import REWRITES, run_rewrites
from tfopt.exporters.onnx.runtime import session
from tfopt.passes.base import PassLog

RNG = np.random.default_rng(0)


def model(nodes, inputs, outputs, initializers=(), opset=17):
    arrays = [numpy_helper.from_array(v, k) for k, v in dict(initializers).items()]
    graph = helper.make_graph(nodes, "g", inputs, outputs, arrays)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return proto


def tensor(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def rewrite(name, proto):
    """(rewritten copy, log) through the driver's checks."""
    log = PassLog()
    source = onnx.ModelProto()
    source.CopyFrom(proto)
    out = REWRITES[name].fn(source, log)
    onnx.checker.check_model(out, full_check=True)
    return out, log


def same_outputs(before, after, feed):
    for a, b in zip(session(before).run(None, feed), session(after).run(None, feed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def dense(bias_shape=(4,), a_shape=(2, 3), extra_reader=False):
    weights = RNG.standard_normal((3, 4)).astype(np.float32)
    bias = RNG.standard_normal(bias_shape).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="dense/MatMul"),
             helper.make_node("Add", ["mm", "b"], ["y"], name="dense/Add")]
    out_shape = [*a_shape[:-1], 4]
    outputs = [tensor("y", out_shape)]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["mm"], ["z"], name="other"))
        outputs.append(tensor("z", out_shape))
    return model(nodes, [tensor("x", list(a_shape))], outputs, {"w": weights, "b": bias})


def test_gemm_fuses_a_dense_layer():
    proto = dense()
    out, log = rewrite("gemm", proto)
    assert [n.op_type for n in out.graph.node] == ["Gemm"]
    assert log.changes == [{"action": "fused", "node": "dense/Add", "pattern": "MatMul+Add"}]
    same_outputs(proto, out, {"x": RNG.standard_normal((2, 3)).astype(np.float32)})


@pytest.mark.parametrize("case, reason", [
    ({"bias_shape": (2, 4)}, "bias"),
    ({"a_shape": (2, 2, 3)}, "2-D"),
    ({"extra_reader": True}, "exactly one Add"),
])
def test_gemm_skips_what_gemm_cannot_express(case, reason):
    out, log = rewrite("gemm", dense(**case))
    assert "Gemm" not in [n.op_type for n in out.graph.node] and not log.changes
    assert log.skipped[0]["node"] == "dense/MatMul" and reason in log.skipped[0]["reason"]


def hard_chain(kind: str, divisor: float = 6.0):
    """Keras' hard_sigmoid / hard_swish as tf2onnx writes them."""
    consts = {"three": np.float32(3), "zero": np.float32(0), "six": np.float32(6),
              "sixth": np.float32(1 / divisor)}
    nodes = [helper.make_node("Add", ["x", "three"], ["a"], name="add"),
             helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
             helper.make_node("Mul", ["c", "sixth"], ["s" if kind == "swish" else "y"],
                              name="scale")]
    if kind == "swish":
        nodes.append(helper.make_node("Mul", ["x", "s"], ["y"], name="swish"))
    return model(nodes, [tensor("x", [2, 5])], [tensor("y", [2, 5])],
                 {k: np.array(v) for k, v in consts.items()})


@pytest.mark.parametrize("kind, op", [("sigmoid", "HardSigmoid"), ("swish", "HardSwish")])
def test_hard_activations_become_one_op(kind, op):
    proto = hard_chain(kind)
    out, log = rewrite("hard_activations", proto)
    assert [n.op_type for n in out.graph.node] == [op]
    assert not out.graph.initializer  # the chain's constants are gone with it
    assert log.changes[0]["op"] == op
    same_outputs(proto, out, {"x": np.linspace(-5, 5, 10, dtype=np.float32).reshape(2, 5)})


def test_hard_activations_skip_a_clip_that_is_not_one():
    out, log = rewrite("hard_activations", hard_chain("sigmoid", divisor=5.0))
    assert "HardSigmoid" not in [n.op_type for n in out.graph.node]
    assert log.skipped == [{"node": "clip", "reason": "its only reader does not divide by 6"}]


def test_hard_activations_need_opset_14():
    proto = hard_chain("swish")
    proto.opset_import[0].version = 13
    out, steps = run_rewrites(proto, ["hard_activations"])
    assert "HardSwish" not in [n.op_type for n in out.graph.node]
    assert "opset 13" in steps[0]["skipped"][0]["reason"]


def round_trip(output_is_cast: bool):
    cast16 = helper.make_node("Cast", ["r"], ["h"], to=TensorProto.FLOAT16, name="to16")
    cast32 = helper.make_node("Cast", ["h"], ["f" if not output_is_cast else "y"],
                              to=TensorProto.FLOAT, name="to32")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), cast16, cast32]
    if not output_is_cast:
        nodes.append(helper.make_node("Neg", ["f"], ["y"], name="neg"))
    nodes.append(helper.make_node("Cast", ["x"], ["k"], to=TensorProto.FLOAT, name="plain"))
    nodes.append(helper.make_node("Identity", ["k"], ["z"], name="keep"))
    return model(nodes, [tensor("x", [3])], [tensor("y", [3]), tensor("z", [3])])


@pytest.mark.parametrize("output_is_cast", [False, True])
def test_cast_round_trips_become_plain_edges(output_is_cast):
    proto = round_trip(output_is_cast)
    out, log = rewrite("cast_round_trips", proto)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("Cast") == 1  # only the cast that was no round trip
    assert [c["node"] for c in log.changes] == ["to32"]
    assert log.skipped == [{"node": "plain", "reason": "its input is not a Cast to fp16"}]
    big = np.array([1e5, -1.0, 7e4], np.float32)  # beyond fp16: the round trip made it inf
    assert np.isfinite(session(out).run(None, {"x": big})[0]).all()


def test_compact_names_drops_the_shared_scope_and_keeps_io_names():
    nodes = [helper.make_node("Relu", ["x"], ["model/block/r"], name="model/block/relu"),
             helper.make_node("Neg", ["model/block/r"], ["y"], name="model/block/neg")]
    out, log = rewrite("compact_names", model(nodes, [tensor("x", [2])], [tensor("y", [2])]))
    assert [n.name for n in out.graph.node] == ["relu", "neg"]
    assert out.graph.node[1].input[0] == "r" and out.graph.node[1].output[0] == "y"
    assert log.changes[0]["prefix"] == "model/block/"


def test_compact_names_skips_when_names_would_collide():
    nodes = [helper.make_node("Relu", ["x"], ["s/r"], name="s/relu"),
             helper.make_node("Neg", ["s/r"], ["r"], name="neg"),
             helper.make_node("Abs", ["r"], ["y"], name="s/abs")]
    out, log = rewrite("compact_names", model(nodes, [tensor("x", [2])], [tensor("y", [2])]))
    assert out.graph.node[0].name == "s/relu"
    assert "two names equal" in log.skipped[0]["reason"]


def test_gru_skips_a_loop_that_is_not_a_gru_cell():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "body", [tensor("i", [], TensorProto.INT64), tensor("cond_in", [], TensorProto.BOOL),
                 tensor("acc_in", [2])],
        [tensor("cond_out", [], TensorProto.BOOL), tensor("acc_out", [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "one")])
    loop = helper.make_node("Loop", ["n", "", "x"], ["y"], body=body, name="counter")
    proto = model([loop], [tensor("x", [2])], [tensor("y", [2])],
                  {"n": np.array(3, np.int64)})
    out, log = rewrite("gru", proto)
    assert [n.op_type for n in out.graph.node] == ["Loop"]
    assert log.skipped == [{"node": "counter", "reason":
                            "its body is not a GRU cell with at most one sequence output"}]


@pytest.mark.parametrize("name", ["onnxoptimizer", "onnxslim"])
def test_maintained_optimizers_report_their_op_changes(name):
    nodes = [helper.make_node("Identity", ["x"], ["t"]), helper.make_node("Relu", ["t"], ["y"])]
    out, log = rewrite(name, model(nodes, [tensor("x", [2])], [tensor("y", [2])]))
    assert [n.op_type for n in out.graph.node] == ["Relu"]
    assert {"action": "removed", "op": "Identity", "count": 1} in log.changes


def test_every_registered_rewrite_is_tested_here():
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    untested = [name for name in REWRITES if f'"{name}"' not in source]
    assert not untested, f"ONNX rewrites without a test here: {untested}"


def test_canonical_names_make_equal_graphs_equal_bytes():
    """The same graph written twice, with tf2onnx counters and node order that differ."""
    weights = {"w__7": RNG.standard_normal((3, 3)).astype(np.float32)}

    def build(counter: int, order):
        nodes = [helper.make_node("MatMul", ["x", "w__7"], [f"mm__{counter}"],
                                  name=f"MatMul__{counter}"),
                 helper.make_node("Relu", ["x"], [f"r__{counter + 1}"], name=f"Relu__{counter}"),
                 helper.make_node("Add", [f"mm__{counter}", f"r__{counter + 1}"], ["y"],
                                  name="add")]
        return model([nodes[i] for i in order], [tensor("x", [2, 3])], [tensor("y", [2, 3])],
                     weights)

    first, log = rewrite("canonical_names", build(55, [0, 1, 2]))
    second, _ = rewrite("canonical_names", build(91, [1, 0, 2]))
    assert first.SerializeToString() == second.SerializeToString()
    assert log.changes[0]["names_renumbered"] > 0
    assert [v.name for v in first.graph.output] == ["y"]  # graph outputs keep their names


def test_short_names_shrink_a_quantized_model_and_keep_its_io():
    nodes = [helper.make_node("Relu", ["x"], ["model/block/relu_output"], name="model/relu"),
             helper.make_node("Neg", ["model/block/relu_output"], ["y"], name="model/neg")]
    proto = model(nodes, [tensor("x", [2])], [tensor("y", [2])])
    out, log = rewrite("short_names", proto)
    assert [n.name for n in out.graph.node] == ["", ""]
    link = out.graph.node[0].output[0]
    assert link == out.graph.node[1].input[0] and len(link) == 1
    assert [v.name for v in out.graph.input] == ["x"]
    assert [v.name for v in out.graph.output] == ["y"]
    assert out.ByteSize() < proto.ByteSize() and log.changes[0]["names"] == 1
    same_outputs(proto, out, {"x": np.array([-1.0, 2.0], np.float32)})


def recurrent(zero_value: float):
    """A GRU whose initial state is Keras' zeros([batch, units]) as tf2onnx writes it, and an
    LSTM whose initial states are a constant (zero or not)."""
    hidden, features = 3, 2
    weights = {"W": RNG.standard_normal((1, 3 * hidden, features)).astype(np.float32),
               "R": RNG.standard_normal((1, 3 * hidden, hidden)).astype(np.float32),
               "LW": RNG.standard_normal((1, 4 * hidden, features)).astype(np.float32),
               "LR": RNG.standard_normal((1, 4 * hidden, hidden)).astype(np.float32),
               "zero": np.zeros((), np.float32), "units": np.array([hidden], np.int64),
               "begin": np.array([1], np.int64), "end": np.array([2], np.int64),
               "axis": np.array([0], np.int64),
               "state": np.full((1, 1, hidden), zero_value, np.float32)}
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Slice", ["shape", "begin", "end"], ["batch"]),
             helper.make_node("Concat", ["batch", "units"], ["zeros_shape"], axis=0),
             helper.make_node("Expand", ["zero", "zeros_shape"], ["zeros"]),
             helper.make_node("Unsqueeze", ["zeros", "axis"], ["h0"]),
             helper.make_node("GRU", ["x", "W", "R", "", "", "h0"], ["y", "y_h"],
                              hidden_size=hidden, name="gru"),
             helper.make_node("LSTM", ["x", "LW", "LR", "", "", "state", "state"],
                              ["ly", "ly_h"], hidden_size=hidden, name="lstm")]
    return model(nodes, [tensor("x", [5, 1, features])],
                 [tensor("y_h", [1, 1, hidden]), tensor("ly_h", [1, 1, hidden])], weights)


def test_zero_initial_states_are_omitted_with_their_shape_computation():
    proto = recurrent(0.0)
    out, log = rewrite("zero_initial_states", proto)
    ops = [n.op_type for n in out.graph.node]
    assert ops == ["GRU", "LSTM"], ops  # Shape, Slice, Concat, Expand, Unsqueeze went
    assert list(out.graph.node[0].input) == ["x", "W", "R"]
    assert list(out.graph.node[1].input) == ["x", "LW", "LR"]
    assert {(c.get("node"), c.get("input"), c.get("pattern")) for c in log.changes} >= {
        ("gru", "initial_h", "Unsqueeze(Expand(0))"), ("lstm", "initial_c", "0")}
    assert {i.name for i in out.graph.initializer} == {"W", "R", "LW", "LR"}
    same_outputs(proto, out, {"x": RNG.standard_normal((5, 1, 2)).astype(np.float32)})


def test_zero_initial_states_keep_a_state_that_is_not_zero():
    out, log = rewrite("zero_initial_states", recurrent(0.5))
    lstm = next(n for n in out.graph.node if n.op_type == "LSTM")
    assert list(lstm.input)[5:] == ["state", "state"]
    assert {"node": "lstm", "reason": "initial_h is not known to be zero"} in log.skipped


def test_quantized_weights_store_a_quantized_constant_as_integers():
    scale = np.array([0.5, 0.25, 0.125, 1.0], np.float32)
    grid = (RNG.integers(-127, 128, (3, 4)) * scale).astype(np.float32)
    initializers = {"w": grid, "s": scale, "zp": np.zeros(4, np.int8),
                    "v": grid, "s1": np.array(0.5, np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["wq"], name="q", axis=1),
             helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wd"], name="dq", axis=1),
             helper.make_node("QuantizeLinear", ["v", "s1"], ["vq"], name="no_zero_point"),
             helper.make_node("DequantizeLinear", ["vq", "s1"], ["vd"], name="dq1"),
             helper.make_node("MatMul", ["x", "wd"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "vd"], ["y"], name="add")]
    before = model(nodes, [tensor("x", [3, 3])], [tensor("y", [3, 4])], initializers)
    out, log = rewrite("quantized_weights", before)
    assert [n.op_type for n in out.graph.node].count("QuantizeLinear") == 1
    stored = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    np.testing.assert_array_equal(stored["wq"], np.rint(grid / scale).astype(np.int8))
    assert [c["node"] for c in log.changes] == ["q"]
    assert "no zero point" in log.skipped[0]["reason"]
    same_outputs(before, out, {"x": RNG.standard_normal((3, 3)).astype(np.float32)})


def test_the_libraries_run_without_the_kernels_and_get_them_back():
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from tfopt.exporters.onnx.rewrites import run_rewrites
    from tfopt.exporters.onnx.rewrites.registry import kernels_as_inputs

    rng = np.random.default_rng(0)
    kernel = numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32), "W")
    folded = numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32), "F")
    bias = numpy_helper.from_array(rng.standard_normal(128).astype(np.float32), "b")
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 128])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]),
             helper.make_node("Identity", ["F"], ["f"]),  # a constant path: folders fold it
             helper.make_node("ReduceSum", ["f"], ["s"], keepdims=0),
             helper.make_node("Add", ["m", "b"], ["a"]), helper.make_node("Add", ["a", "s"], ["y"])]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [kernel, folded, bias]),
                              opset_imports=[helper.make_opsetid("", 17)])
    view, aside = kernels_as_inputs(proto)
    assert list(aside) == ["W"] and [i.name for i in view.graph.input] == ["x", "W"]
    assert {t.name for t in view.graph.initializer} == {"F", "b"}
    out, steps = run_rewrites(proto, ("onnxslim",))
    assert "error" not in steps[0], steps
    assert [i.name for i in out.graph.input] == ["x"]
    weights = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    np.testing.assert_array_equal(weights["W"], numpy_helper.to_array(kernel))
    import onnxruntime

    feed = {"x": rng.standard_normal((1, 64)).astype(np.float32)}
    before = onnxruntime.InferenceSession(proto.SerializeToString()).run(None, feed)[0]
    after = onnxruntime.InferenceSession(out.SerializeToString()).run(None, feed)[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
