"""End-to-end conversions of the bundled samples and a keras.applications model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES, save_serving, tree_digest

from tfopt import compat

TARGETS = ["onnx", "tflite", "pb", "saved_model"]
SUMMARY_OPS = ("ScalarSummary", "HistogramSummary", "MergeSummary", "WriteScalarSummary",
               "WriteSummary", "TensorSummaryV2")


def assert_all_targets_match(result, atol=1e-5):
    assert [a.format for a in result.artifacts] == TARGETS
    for artifact in result.artifacts:
        assert artifact.status == "ok", artifact.error
        assert artifact.parity.passed
        assert artifact.parity.max_abs_err <= atol, (artifact.format, artifact.parity)
        assert Path(artifact.path).exists()
    assert result.exit_code == 0


def stock_tflite(src: Path) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(str(src)).convert()


def test_keras_cnn_converts_and_drops_optimizer_state(freeze_once, tmp_path):
    before = tree_digest(SAMPLES / "keras_cnn")
    result = freeze_once("keras_cnn", SAMPLES / "keras_cnn")
    assert_all_targets_match(result)
    assert tree_digest(SAMPLES / "keras_cnn") == before

    from tfopt.exporters.tflite import op_names
    ops = op_names(Path(result.artifact("tflite").path))
    assert "VAR_HANDLE" not in ops and "READ_VARIABLE" not in ops

    # the optimizer's slots were in the source; none reach the frozen graph
    source = result.source
    assert source.optimizer_variables > 0 and result.removed["optimizer"] == \
        source.optimizer_variables
    model_weight_bytes = source.variable_bytes - source.optimizer_variable_bytes
    assert 0 < result.frozen.constant_bytes <= model_weight_bytes
    report = json.loads((Path(result.out_dir) / "report.json").read_text())
    assert report["source"]["variable_bytes"] == source.variable_bytes
    assert report["frozen"]["constant_bytes"] == result.frozen.constant_bytes


# the stock converter, then LiteRT on its model, in a process of its own: TF 2.15 and 2.17's
# converter abort the process on keras_cnn (LLVM ERROR: Failed to infer result type(s))
STOCK_RUN = """
import json, pathlib, sys, numpy as np, tensorflow as tf
from tfopt import compat
from tfopt.exporters.tflite import op_names
path = sys.argv[2]
open(path, "wb").write(tf.lite.TFLiteConverter.from_saved_model(sys.argv[1]).convert())
found = {"var_handles": op_names(pathlib.Path(path)).count("VAR_HANDLE")}
try:
    runner = compat.tflite_interpreter_class()(model_path=path).get_signature_runner()
    out = runner(inputs=np.ones((1, 32, 32, 3), np.float32))["output_0"]
    found["output"] = "nan" if np.isnan(out).all() else out.tolist()
except RuntimeError as exc:  # TF 2.19: READ_VARIABLE fails to invoke
    found["output"] = str(exc).splitlines()[0]
print(json.dumps(found))
"""


def test_stock_converter_on_keras_cnn_gives_no_working_model(tmp_path):
    """The baseline tfopt beats: the stock converter keeps resource variables in the model,
    whose outputs are NaN (TF 2.21) or fail to compute (2.19), or crashes (2.15, 2.17)."""
    done = subprocess.run([sys.executable, "-c", STOCK_RUN, str(SAMPLES / "keras_cnn"),
                           str(tmp_path / "stock.tflite")], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        assert "LLVM ERROR" in done.stderr, done.stderr[-2000:]
        return
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["var_handles"] > 0
    assert found["output"] == "nan" or "READ_VARIABLE" in found["output"], found


def test_debug_module_loses_every_debug_op(freeze_once):
    result = freeze_once("debug_module", SAMPLES / "debug_module")
    assert_all_targets_match(result)
    for op in ("Assert", "CheckNumerics", "PrintV2", "StringFormat") + SUMMARY_OPS:
        assert op not in result.frozen.ops
        assert op not in result.artifact("pb").ops
    assert result.removed["debug"] >= 4  # CheckNumerics, PrintV2, StringFormat, Assert
    assert result.removed["summaries"] >= 1
    strip = next(p for p in result.passes if p.name == "strip_training")
    assert {c["op"] for c in strip.changes} >= {"CheckNumerics", "PrintV2", "Assert",
                                                "ScalarSummary"}


def test_stock_converter_fails_on_debug_module():
    with pytest.raises(Exception, match="StringFormat"):
        stock_tflite(SAMPLES / "debug_module")


def test_training_signature_is_refused_with_a_hint(tmp_path):
    import tfopt
    from tfopt.errors import InputError

    with pytest.raises(InputError,
                       match=r"'train' writes variable 'w' \(AssignSubVariableOp.*--signature"):
        tfopt.freeze(SAMPLES / "debug_module", tmp_path / "out", signature="train")
    assert not (tmp_path / "out").exists()


def test_lstm_gru_converts_or_reports_tflite(freeze_once):
    result = freeze_once("lstm_gru", SAMPLES / "lstm_gru")
    # native recurrent ops; this GRU's kernel and recurrent kernel have the same shape
    assert {"LSTM", "GRU"} <= set(result.artifact("onnx").ops)
    assert "Loop" not in result.artifact("onnx").ops
    for fmt in ("onnx", "pb", "saved_model"):
        artifact = result.artifact(fmt)
        assert artifact.status == "ok" and artifact.parity.max_abs_err <= 1e-5, artifact
    tflite = result.artifact("tflite")
    if tflite.status == "ok":
        assert tflite.parity.passed and result.exit_code == 0
        assert not any(op.startswith("Flex") for op in tflite.ops)
        if tflite.fallback == "batch_1":  # the artifact must say it takes batch 1 only
            from tfopt.exporters.tflite import interpreter
            details = interpreter(Path(tflite.path)).get_input_details()
            assert [list(d["shape_signature"][:1]) for d in details] == [[1]]
    else:
        assert result.exit_code == 3
        assert tflite.blocking_ops and tflite.attempts and tflite.error
    assert tflite.attempts[0]["fallback"] == "none"


def test_pads_fold_into_convs_for_every_target(freeze_once, mobilenet_v2):
    result = freeze_once("mobilenet_v2", mobilenet_v2)
    fold = next(p for p in result.passes if p.name == "fold_pad")
    # ZeroPadding2D before each stride-2 depthwise conv is exactly SAME padding
    assert [c["padding"] for c in fold.changes] == ["SAME"] * 4 and not fold.skipped
    assert "Pad" not in result.frozen.ops
    assert "PAD" not in result.artifact("tflite").ops
    onnx_artifact = result.artifact("onnx")
    assert "Pad" not in onnx_artifact.ops
    steps = {s["step"]: s for s in onnx_artifact.steps}
    assert set(steps) == {"tf2onnx", "gru", "zero_initial_states", "onnxoptimizer", "onnxslim",
                          "gemm", "hard_activations", "quantized_weights", "compact_names",
                          "canonical_names"}
    assert steps["tf2onnx"]["opset"] >= 13  # the opset the artifact was converted at
    assert all("error" not in s for s in steps.values()), steps
    assert steps["hard_activations"]["nodes"] == onnx_artifact.nodes < steps["tf2onnx"]["nodes"]
    assert "Gemm" in onnx_artifact.ops and "MatMul" not in onnx_artifact.ops  # the Dense head


def test_mobilenet_v2_keras_file_converts(freeze_once, mobilenet_v2):
    result = freeze_once("mobilenet_v2", mobilenet_v2)
    assert_all_targets_match(result)
    assert result.source.format == "keras" and result.artifact("onnx").parity.samples == 3
    # an informative model: outputs vary with the input, so parity means something
    import onnxruntime
    session = onnxruntime.InferenceSession(result.artifact("onnx").path)
    rng = np.random.default_rng(5)
    (image,) = session.get_inputs()  # Keras 3 names it input_layer, Keras 2 input_<n>
    probs = [session.run(None, {image.name: rng.standard_normal((1, 96, 96, 3),
                                                                dtype=np.float32)})[0]
             for _ in range(2)]
    assert np.abs(probs[0] - probs[1]).max() > 1e-3
    assert not any(op.startswith("_") for op in result.frozen.ops)
    # every batch norm folded: no BN op, no Rsqrt, no Mul/Add by a constant after a conv
    assert not {"FusedBatchNormV3", "Rsqrt", "Mul", "Sub", "AddN"} & set(result.frozen.ops), \
        result.frozen.ops
    import tensorflow as tf
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(result.artifact("pb").path).read_bytes())
    ops = {n.name: n.op for n in graph_def.node}
    adds = [n for n in graph_def.node if n.op in ("Add", "AddV2")]
    assert len(adds) == 10  # the residual connections, nothing else
    assert all(ops[i.split(":")[0]] != "Const" for n in adds for i in n.input)
    fold = next(p for p in result.passes if p.name == "fold_scale_shift")
    assert not fold.skipped
    assert {c["pattern"].split("+")[0] for c in fold.changes} == {"Conv2D",
                                                                  "DepthwiseConv2dNative"}


def test_h5_file_loads(tmp_path):
    import keras

    import tfopt

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,), name="features"), keras.layers.Dense(3)])
    model.save(tmp_path / "dense.h5")
    result = tfopt.freeze(tmp_path / "dense.h5", tmp_path / "out", targets=["pb", "tflite"])
    assert result.exit_code == 0
    assert [t.name for t in result.inputs] == ["features"]
    assert result.artifact("tflite").parity.max_abs_err <= 1e-5


def test_tf_module_with_several_signatures_and_input_shape(tmp_path):
    import tensorflow as tf

    import tfopt

    class Scaler(tf.Module):
        def __init__(self):
            super().__init__()
            self.k = tf.Variable([[1.5, -2.0, 0.5]])

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="v")])
        def scale(self, v):
            return {"scaled": v * self.k}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="v")])
        def total(self, v):
            return {"sum": tf.reduce_sum(v * self.k, axis=1)}

    module = Scaler()
    tf.saved_model.save(module, str(tmp_path / "m"),
                        signatures={"scale": module.scale, "total": module.total})
    result = tfopt.freeze(tmp_path / "m", tmp_path / "out", signature="total",
                          input_shapes={"v": [4, 3]})
    assert result.exit_code == 0, [a.error for a in result.artifacts]
    assert result.inputs[0].shape == (4, 3)
    assert [t.name for t in result.outputs] == ["sum"]
    import onnx
    proto = onnx.load(result.artifact("onnx").path)
    assert [i.name for i in proto.graph.input] == ["v"]
    assert [o.name for o in proto.graph.output] == ["sum"]
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [4, 3]


def test_user_data_is_used_for_verification(tmp_path, freeze_once):
    import tfopt

    data = tmp_path / "inputs.npz"
    np.savez(data, x=np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8))
    result = tfopt.freeze(SAMPLES / "debug_module", tmp_path / "out", data=data,
                          targets=["onnx"])
    assert result.artifact("onnx").parity.samples == 2  # one feed per row of the .npz
    assert result.exit_code == 0


def test_a_failing_onnx_post_optimizer_is_skipped_and_reported(monkeypatch):
    import onnx
    from onnx import helper

    from tfopt.exporters.onnx.rewrites import REWRITES, OnnxRewrite, run_rewrites

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Identity", ["x"], ["t"]), helper.make_node("Relu", ["t"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])

    def broken(proto, log):
        raise RuntimeError("optimizer bug")

    def invalid(proto, log):  # drops the node that produces the output: the checker refuses it
        del proto.graph.node[1]
        return proto

    monkeypatch.setitem(REWRITES, "broken", OnnxRewrite("broken", broken))
    monkeypatch.setitem(REWRITES, "invalid", OnnxRewrite("invalid", invalid))
    optimized, steps = run_rewrites(model, ["broken", "invalid", "onnxoptimizer"])
    assert steps[0] == {"step": "broken", "error": "optimizer bug"}
    assert steps[1]["step"] == "invalid" and "error" in steps[1]
    assert (steps[2]["step"], steps[2]["nodes"]) == ("onnxoptimizer", 1)  # the Identity is gone
    assert steps[2]["changes"] == [{"action": "removed", "op": "Identity", "count": 1}]
    assert [n.op_type for n in optimized.graph.node] == ["Relu"]


def test_onnx_inlines_xla_only_calls_and_rewrites_erfc(tmp_path):
    """Keras 3's grouped conv lives in an XLA-only function, exact GELU uses Erfc: tf2onnx
    alone writes an ONNX model that onnxruntime refuses (FIELD_NOTES)."""
    import keras

    import tfopt

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 4), name="image")
    h = keras.layers.Conv2D(8, 3, groups=2, padding="same")(inputs)
    outputs = keras.layers.Activation("gelu")(h)  # exact (erf) GELU by default
    path = tmp_path / "grouped"
    save_serving(keras.Model(inputs, outputs), str(path))
    result = tfopt.freeze(path, tmp_path / "out", targets=["onnx"])
    onnx = result.artifact("onnx")
    assert onnx.status == "ok" and onnx.parity.passed, onnx.error
    assert "Conv" in onnx.ops and "Erf" in onnx.ops
    assert not {"StatefulPartitionedCall", "Erfc"} & set(onnx.ops)


@pytest.mark.skipif(compat.keras_major() < 3, reason="hard_swish is a Keras 3 activation")
def test_onnx_writes_hard_swish_and_hard_sigmoid(tmp_path):
    """MobileNetV3's activations: four ONNX nodes each from tf2onnx, one after tfopt."""
    import keras

    import tfopt

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    h = keras.layers.Activation("hard_swish")(h)
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True)(h)
    gate = keras.layers.Conv2D(8, 1, bias_initializer="ones")(gate)
    gate = keras.layers.Activation("hard_sigmoid")(gate)
    outputs = keras.layers.Multiply()([h, gate])
    path = tmp_path / "hard.keras"
    keras.Model(inputs, outputs).save(path)
    onnx = tfopt.freeze(path, tmp_path / "out", targets=["onnx"]).artifact("onnx")
    assert onnx.status == "ok" and onnx.parity.passed
    assert onnx.ops.get("HardSwish") == 1 and onnx.ops.get("HardSigmoid") == 1, onnx.ops
    assert "Clip" not in onnx.ops
    assert {s["step"]: s.get("error") for s in onnx.steps}["hard_activations"] is None
