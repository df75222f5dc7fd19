"""Detection heads: the padded non-max suppression that TF marks for the TFLite converter's
fusion stays a call through freezing (TFLite: one NMS builtin, ONNX: NonMaxSuppression),
combined non-max suppression becomes TFLite builtins, and boxes are drawn as boxes."""
from __future__ import annotations

import numpy as np
import pytest
import zoo


@pytest.fixture(scope="module")
def padded_head(tmp_path_factory):
    return zoo.padded_nms_head(tmp_path_factory.mktemp("detection") / "padded")


def test_padded_nms_keeps_its_fusion_marker(padded_head, tmp_path):
    import tensorflow as tf

    import tfopt

    result = tfopt.freeze(padded_head, tmp_path / "out")
    assert result.exit_code == 0, [(a.format, a.error) for a in result.artifacts]
    by_format = {a.format: a for a in result.artifacts}
    assert by_format["tflite"].ops.get("NON_MAX_SUPPRESSION_V4") == 1
    assert "WHILE" not in by_format["tflite"].ops
    assert by_format["onnx"].ops.get("NonMaxSuppression") == 1
    assert "Loop" not in by_format["onnx"].ops
    stock = tf.lite.TFLiteConverter.from_saved_model(str(padded_head)).convert()
    assert by_format["tflite"].bytes <= 1.05 * len(stock)
    assert "boxes" in result.verification["drawn"]["boxes"]["drawn"]
    assert all(a.parity.max_abs_err == 0 for a in result.artifacts)


def test_combined_nms_becomes_tflite_builtins(tmp_path):
    import tensorflow as tf

    import tfopt

    path = zoo.combined_nms_head(tmp_path / "combined", batch=2, count=50, boxes_per_class=3,
                                 classes=3, per_class=6, total=10)
    result = tfopt.freeze(path, tmp_path / "out")
    assert result.exit_code == 0, [(a.format, a.error) for a in result.artifacts]
    assert [o.name for o in result.outputs] == ["boxes_output", "classes", "scores_output",
                                                "valid"]
    by_format = {a.format: a for a in result.artifacts}
    tflite = by_format["tflite"]
    assert tflite.ops["NON_MAX_SUPPRESSION_V4"] == 2 * 3  # batch x classes
    assert not any(op.startswith("Flex") for op in tflite.ops)
    assert by_format["onnx"].ops.get("NonMaxSuppression") == 2 * 3  # tf2onnx: shared boxes only
    for artifact in result.artifacts:
        assert artifact.parity.max_abs_err <= 1e-6, artifact.format
    # the drawn boxes leave detections to compare, not only padding
    interpreter = tf.lite.Interpreter(str(tmp_path / "out" / "model.tflite"))
    interpreter.allocate_tensors()
    rng = np.random.default_rng(3)
    corner = rng.uniform(0, 0.8, (2, 50, 3, 2))
    boxes = np.concatenate([corner, corner + 0.2], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (2, 50, 3)).astype(np.float32)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], boxes if detail["shape"][-1] == 4 else scores)
    interpreter.invoke()
    got = {d["name"]: interpreter.get_tensor(d["index"])
           for d in interpreter.get_output_details()}
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    expected = serve(boxes=tf.constant(boxes), scores=tf.constant(scores))
    (valid,) = [v for v in got.values() if v.dtype == np.int32]
    np.testing.assert_array_equal(valid, expected["valid"].numpy())
    assert valid.min() > 0


def test_batched_padded_nms_is_inlined_for_onnx_and_says_why(tmp_path):

    import tfopt

    zoo.padded_nms_head(tmp_path / "batched", boxes=(2, 32), max_output=4)
    result = tfopt.freeze(tmp_path / "batched", tmp_path / "out", targets=["onnx", "pb"])
    assert result.exit_code == 0, [(a.format, a.error) for a in result.artifacts]
    reports = {(p.name, p.target): p for p in result.passes}
    (skip,) = reports["fused_nms_to_op", "onnx"].skipped
    assert "[2, 32, 4]" in skip["reason"] and "batched" in skip["reason"]
    assert reports["inline_xla_calls", "onnx"].changes  # the body, inlined for tf2onnx
    (unmarked,) = reports["unmark_fused_calls", "pb"].changes
    assert unmarked["function"].startswith("__inference_non_max_suppression_padded_v2")
