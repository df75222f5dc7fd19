"""Quantization-aware-trained models (FakeQuant ops): the fp32 targets keep TF's rounding and
clamping, and int8 takes the model's own ranges without calibration data."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
from zoo import fake_quant_cnn

from tfopt.graph import fake_quant_steps
from tfopt.passes import PassContext, PassLog
from tfopt.passes.nudge_fake_quant import nudge_fake_quant
from tfopt.verification.checks import compare


def _int8_exact_cpu() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return True
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


# onnxruntime's QLinearConv/QLinearMatMul (what its optimizer makes of QDQ pairs) sum uint8 x
# int8 products in saturating 16-bit lanes on x86 without VNNI (AVX2 only, e.g. AMD EPYC
# before Zen 4): the QDQ ONNX lands several grid steps off there, and tfopt reports it as
# differing; strict, so that a fixed onnxruntime shows here
onnx_int8_exact = pytest.mark.xfail(
    not _int8_exact_cpu(), strict=True,
    reason="onnxruntime's u8s8 kernels saturate on x86 without VNNI: the ONNX differs")


@pytest.fixture(scope="module")
def qat_cnn(tmp_path_factory):
    return fake_quant_cnn(tmp_path_factory.mktemp("qat") / "cnn")


@onnx_int8_exact
def test_fp32_targets_keep_the_fake_quant_rounding(qat_cnn, tmp_path):
    import onnx

    import tfopt

    result = tfopt.freeze(qat_cnn, tmp_path / "out")
    assert result.exit_code == 0, [a.parity.reason or a.error for a in result.artifacts]
    for artifact in result.artifacts:
        assert artifact.parity.passed and artifact.parity.max_abs_err <= 0.063, artifact.format
    assert any("quantization-aware (5 fake-quant ops)" in n for n in
               result.verification["notes"])
    proto = onnx.load(str(tmp_path / "out" / "model.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == 3 and ops.count("DequantizeLinear") == 5, ops
    weights = [i for i in proto.graph.initializer  # not the zero points: the kernels
               if i.data_type == onnx.TensorProto.INT8 and np.prod(i.dims) >= 72]
    assert len(weights) == 2, "fake-quantized weights are stored as int8"
    tflite = result.artifact("tflite").ops
    assert tflite.get("QUANTIZE", 0) >= 3, tflite


@onnx_int8_exact
def test_int8_takes_the_models_own_ranges_without_calibration(qat_cnn, tmp_path):
    import tfopt

    fp32 = tfopt.freeze(qat_cnn, tmp_path / "fp32", targets=["tflite", "onnx"])
    result = tfopt.freeze(qat_cnn, tmp_path / "int8", targets=["tflite", "onnx"],
                          quantize="int8")
    assert result.exit_code == 0, [a.parity.reason or a.error for a in result.artifacts]
    for fmt in ("tflite", "onnx"):
        artifact = result.artifact(fmt)
        assert artifact.precision == "int8" and artifact.parity.passed, fmt
        assert artifact.parity.cosine > 0.999, (fmt, artifact.parity.cosine)
    assert result.artifact("tflite").bytes < 0.35 * fp32.artifact("tflite").bytes
    assert result.artifact("tflite").ops.get("CONV_2D") == 1
    onnx_steps = {s.get("step"): s for s in result.artifact("onnx").steps}
    assert onnx_steps["fake quants"]["left_float"] == 0


@onnx_int8_exact
def test_calibration_only_quantizes_what_the_model_left_float(tmp_path):
    import onnx

    import tfopt

    source = fake_quant_cnn(tmp_path / "cnn", left_float=True)
    result = tfopt.freeze(source, tmp_path / "int8", targets=["onnx"], quantize="int8",
                          calibration="random")
    artifact = result.artifact("onnx")
    assert result.exit_code == 0 and artifact.parity.passed, artifact.parity.reason
    step = next(s for s in artifact.steps if s.get("step") == "fake quants")
    assert step["left_float"] == step["calibrated"] == 1
    ops = [n.op_type for n in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node]
    assert ops.count("QuantizeLinear") > 3, "the float head got its own QDQ pairs"


def test_int8_without_calibration_still_refuses_a_float_model(tmp_path):
    import tensorflow as tf

    from tfopt.commands import main
    from tfopt.errors import UsageError

    module = tf.Module()
    module.w = tf.Variable(np.ones((4, 2), np.float32))
    serve = tf.function(lambda x: {"y": tf.matmul(x, module.w)},
                        input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    tf.saved_model.save(module, str(tmp_path / "plain"), signatures=serve.get_concrete_function())
    with pytest.raises(UsageError, match="needs calibration data"):
        import tfopt
        tfopt.freeze(tmp_path / "plain", tmp_path / "out", quantize="int8")
    assert main([str(tmp_path / "plain"), "-o", str(tmp_path / "cli"), "--quantize",
                 "int8"]) == 2


@pytest.mark.parametrize("op,low,high,narrow", [
    ("FakeQuantWithMinMaxVars", -8.0, 8.0, False),  # zero point 127.5
    ("FakeQuantWithMinMaxVars", -0.3, 5.1, True),
    ("FakeQuantWithMinMaxArgs", -3.0, 3.0, False),
    ("FakeQuantWithMinMaxVarsPerChannel", [-1.0, -0.5, 0.2], [1.0, 2.5, 3.0], False),
])
def test_nudged_ranges_compute_what_tf_computes(op, low, high, narrow):
    import tensorflow as tf

    quant = tf.quantization
    channels = np.size(low)
    values = np.random.default_rng(1).normal(0, 4, (4096, channels)).astype("float32")
    values[:4] = [[-1e9] * channels, [1e9] * channels, [0.0] * channels, [-8.0] * channels]

    def graph(low, high):
        g = tf.Graph()
        with g.as_default():
            x = tf.compat.v1.placeholder(tf.float32, [None, channels], name="x")
            if op == "FakeQuantWithMinMaxArgs":
                quant.fake_quant_with_min_max_args(x, low, high, narrow_range=narrow, name="fq")
            elif op == "FakeQuantWithMinMaxVars":
                quant.fake_quant_with_min_max_vars(x, tf.constant(low), tf.constant(high),
                                                   narrow_range=narrow, name="fq")
            else:
                quant.fake_quant_with_min_max_vars_per_channel(
                    x, tf.constant(low), tf.constant(high), narrow_range=narrow, name="fq")
        return g.as_graph_def()

    def run(graph_def):
        g = tf.Graph()
        with g.as_default():
            tf.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=g) as session:
            return session.run("fq:0", {"x:0": values})

    original = graph(low, high)
    log = PassLog()
    nudged = nudge_fake_quant(original, PassContext(("x",), ("fq",)), log)
    np.testing.assert_array_equal(run(nudged), run(original))
    if op != "FakeQuantWithMinMaxVarsPerChannel" and not narrow:
        assert [c["action"] for c in log.changes] == ["nudged"]
        step = (high - low) / 255
        zero_point = -log.changes[0]["nudged_min"] / step
        assert abs(zero_point - round(zero_point)) < 1e-3, log.changes


def test_an_output_on_a_fake_quant_grid_may_move_one_step(qat_cnn):
    from tfopt.loaders import load
    from tfopt.loaders.base import LoadOptions
    from tfopt.passes import DEFAULT_PIPELINE, run_pipeline

    model, _ = run_pipeline(load(qat_cnn, LoadOptions()).model, DEFAULT_PIPELINE)
    steps = fake_quant_steps(model.graph_def, ["logits"])
    assert steps == pytest.approx({"logits": 16 / 254}, rel=1e-4)
    expected = [{"logits": np.linspace(-8, 8, 40, dtype=np.float32).reshape(4, 10)}]
    moved = [{"logits": expected[0]["logits"] + np.eye(4, 10, dtype=np.float32) * steps["logits"]}]
    assert compare(expected, moved, steps=steps).passed
    assert not compare(expected, moved).passed
    twice = [{"logits": expected[0]["logits"] + np.eye(4, 10, dtype=np.float32) * 0.13}]
    assert "one step of the fake-quant grid" in compare(expected, twice, steps=steps).reason


@pytest.mark.parametrize("mode", ["fp16", "dynamic"])
def test_other_modes_keep_the_fake_quants_valid(qat_cnn, tmp_path, mode):
    import tfopt

    result = tfopt.freeze(qat_cnn, tmp_path / mode, targets=["onnx"], quantize=mode)
    artifact = result.artifact("onnx")
    assert result.exit_code == 0 and artifact.parity.passed, artifact.error or \
        artifact.parity.reason
