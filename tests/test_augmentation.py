"""Random augmentation layers that `model.export` traced active are stripped to what Keras
does at inference (identity, or RandomCrop's center crop and resize); a signature that
writes any other variable is refused, naming the variable and the op that writes it."""
from __future__ import annotations

import numpy as np
import pytest
from zoo import save_serving


def _augmenting_cnn(keras, size: int = 40):
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    for layer in (keras.layers.RandomFlip(), keras.layers.RandomRotation(0.1),
                  keras.layers.RandomZoom(0.1), keras.layers.RandomTranslation(0.1, 0.1),
                  keras.layers.RandomContrast(0.2), keras.layers.GaussianNoise(0.1)):
        x = layer(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)  # a shape the augmentation must leave alone
    return keras.Model(inputs, keras.layers.Dense(4)(x))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    model = _augmenting_cnn(keras)
    path = tmp_path_factory.mktemp("augmentation") / "augmenting"
    save_serving(model, path)
    return model, path


def test_exported_augmentation_is_stripped_to_keras_inference(exported, tmp_path):
    import onnxruntime

    import tfopt

    model, path = exported
    result = tfopt.freeze(path, tmp_path / "out")
    assert result.exit_code == 0, [(a.format, a.error) for a in result.artifacts]
    assert result.removed["augmentation"] == 5  # GaussianNoise is traced inactive
    (report,) = [p for p in result.passes if p.name == "strip_augmentation"]
    assert {c["becomes"].split(" (")[0] for c in report.changes} == {"identity"}
    assert "strip_augmentation" in result.source.reference
    x = np.random.default_rng(0).uniform(0, 255, (3, 40, 40, 3)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    feed = {session.get_inputs()[0].name: x}
    first, second = session.run(None, feed)[0], session.run(None, feed)[0]
    np.testing.assert_array_equal(first, second)  # deterministic
    expected = np.asarray(model(x, training=False))
    np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert not np.allclose(expected, np.asarray(model(x, training=True)), atol=1e-3)


def test_random_crop_becomes_center_crop_and_resize(tmp_path):
    import keras
    import onnxruntime

    import tfopt

    inputs = keras.Input((40, 48, 3))
    model = keras.Model(inputs, keras.layers.RandomCrop(24, 32)(inputs))
    save_serving(model, tmp_path / "crop")
    result = tfopt.freeze(tmp_path / "crop", tmp_path / "out", targets=["onnx", "tflite"])
    assert result.exit_code == 0, [(a.format, a.error) for a in result.artifacts]
    (change,) = [c for p in result.passes for c in p.changes if c.get("layer")]
    assert change["becomes"] == "center crop 36x48, bilinear resize to 24x32"
    x = np.random.default_rng(1).uniform(0, 1, (2, 40, 48, 3)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    # Keras documents RandomCrop's inference as this resize (tf_keras does it; Keras 3.15
    # returns the input uncropped, which would break any Flatten after it)
    expected = keras.layers.Resizing(24, 32, crop_to_aspect_ratio=True)(x)
    np.testing.assert_allclose(got, np.asarray(expected), atol=1e-5)


def test_keras_file_counts_the_layers_inference_skips(tmp_path):
    import keras

    import tfopt

    keras.utils.set_random_seed(0)
    path = tmp_path / "augmenting.keras"
    _augmenting_cnn(keras).save(path)
    result = tfopt.freeze(path, tmp_path / "out", targets=["onnx"])
    assert result.exit_code == 0
    assert result.removed["augmentation"] == 6


def test_a_signature_writing_a_weight_is_refused_naming_it(tmp_path, capsys):
    import tensorflow as tf

    from tfopt.commands import main

    class Step(tf.Module):
        def __init__(self):
            self.kernel = tf.Variable(np.ones((3, 2), np.float32), name="dense_kernel")

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def serve(self, x):
            y = tf.matmul(x, self.kernel)
            self.kernel.assign_sub(0.1 * tf.matmul(x, y - 1.0, transpose_a=True))
            return {"y": y}

    module = Step()
    tf.saved_model.save(module, str(tmp_path / "step"), signatures={"serving_default":
                                                                     module.serve})
    assert main([str(tmp_path / "step"), "-o", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert "writes variable 'dense_kernel' (AssignSubVariableOp" in message, message
    assert "training step" in message and "Traceback" not in message
