"""Keras mixed-precision models (mixed_float16, mixed_bfloat16) convert with default flags:
the noise floor moves the inputs by one ulp of the compute precision, TFLite computes in
float32 with builtins, ONNX keeps float16 and rewrites bfloat16, and each artifact says so."""
from __future__ import annotations

import numpy as np
import pytest
from zoo import save_serving


def _export(keras, policy: str, path) -> None:
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((24, 24, 3))
        x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Conv2D(16, 3, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(10)(x)  # float16 out: the signature keeps it
        save_serving(keras.Model(inputs, outputs), path)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_mixed_precision_cnn_converts_with_default_flags(policy, tmp_path):
    import keras
    import tensorflow as tf

    import tfopt

    compute = policy.removeprefix("mixed_")
    _export(keras, policy, tmp_path / "model")
    result = tfopt.freeze(tmp_path / "model", tmp_path / "out")
    assert result.exit_code == 0, [(a.format, a.error, a.parity) for a in result.artifacts]
    assert result.outputs[0].dtype == compute
    assert any(f"computes in {compute}" in n for n in result.verification["notes"])
    assert max(result.verification["noise_floor"].values()) > 0  # no longer a zero floor
    by_format = {a.format: a for a in result.artifacts}
    assert by_format["tflite"].note == f"the original's {compute} compute runs in float32 here"
    assert not any(op.startswith("Flex") for op in by_format["tflite"].ops)
    onnx_note = by_format["onnx"].note
    assert ("keeps the original's float16" in onnx_note) if compute == "float16" else \
        onnx_note == "the original's bfloat16 compute runs in float32 here"
    interpreter = tf.lite.Interpreter(str(tmp_path / "out" / "model.tflite"))
    (detail,) = interpreter.get_output_details()  # neither runtime has bfloat16 tensors
    assert detail["dtype"] == np.dtype("float16" if compute == "float16" else "float32")


def test_fp16_quantization_of_a_mixed_float16_model_is_compact(tmp_path):
    import keras

    import tfopt

    _export(keras, "mixed_float16", tmp_path / "model")
    result = tfopt.freeze(tmp_path / "model", tmp_path / "out", targets=["tflite"],
                          quantize="fp16")
    (tflite,) = result.artifacts
    assert result.exit_code == 0 and tflite.precision == "fp16"
    float32 = tfopt.freeze(tmp_path / "model", tmp_path / "f32", targets=["tflite"])
    assert tflite.bytes < 0.75 * float32.artifacts[0].bytes
