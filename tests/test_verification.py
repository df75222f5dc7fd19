"""Verification that a user can trust both ways: the scale-aware fp32 rule, the original's
noise floor, inputs drawn from the model's own domain, and messages that name the cause."""
from __future__ import annotations

import numpy as np
import pytest

from tfopt import compat
from tfopt.verification.checks import compare, noise_floor

RNG = np.random.default_rng(0)


def logits(scale: float = 40.0, n: int = 4) -> list[dict]:
    return [{"logits": (RNG.standard_normal((1, 10)) * scale).astype(np.float32)}
            for _ in range(n)]


def test_scale_rule_passes_float_noise_on_large_logits_that_elementwise_fails():
    expected = logits()
    expected[0]["logits"][0, 0] = 1e-3  # a near-zero logit next to logits of 40
    actual = [{"logits": v["logits"] + np.float32(3e-4)} for v in expected]
    assert compare(expected, actual).passed
    elementwise = compare(expected, actual, atol=1e-4, rtol=1e-3)
    assert not elementwise.passed and "--atol" in elementwise.reason


def test_scale_rule_fails_a_real_conversion_bug():
    expected = logits()
    actual = [{"logits": v["logits"].copy()} for v in expected]
    actual[1]["logits"][0, 3] *= 1.01  # one wrong element, 1 % off: a wrong fold
    parity = compare(expected, actual)
    assert not parity.passed and parity.rule == "scale"
    assert "max abs error" in parity.reason and "tolerance" in parity.reason
    assert "--atol/--rtol" in parity.reason  # the flag that changes the rule


def test_noise_floor_widens_the_tolerance_only_as_far_as_the_original_moves():
    expected = logits()
    actual = [{"logits": v["logits"] + np.float32(0.5)} for v in expected]
    assert not compare(expected, actual).passed
    assert compare(expected, actual, noise={"logits": 0.1}).passed  # 0.5 < 10 x 0.1
    assert not compare(expected, actual, noise={"logits": 0.01}).passed


def test_integer_outputs_must_be_equal():
    expected = [{"ids": np.array([[1, 2, 3]])}]
    assert compare(expected, [{"ids": np.array([[1, 2, 3]])}]).passed
    parity = compare(expected, [{"ids": np.array([[1, 2, 4]])}])
    assert not parity.passed and "must be equal" in parity.reason


def test_budget_failure_names_the_criterion_and_its_flag():
    from tfopt.verification.checks import BUDGETS

    expected = [{"p": np.eye(10, dtype=np.float32)[[i % 10]]} for i in range(20)]
    actual = [{"p": np.eye(10, dtype=np.float32)[[(i + 1) % 10]]} for i in range(20)]
    parity = compare(expected, actual, budget=BUDGETS["int8"])
    assert not parity.passed and "--min-cosine" in parity.reason


def test_noise_floor_measures_how_far_the_original_moves():
    def chaotic(feed):
        return {"y": np.sin(feed["x"].astype(np.float64) * 1e9)}

    def smooth(feed):
        return {"y": feed["x"] * 2.0}

    feeds = [{"x": RNG.standard_normal((1, 4)).astype(np.float32)} for _ in range(3)]
    assert noise_floor(chaotic, feeds, [chaotic(f) for f in feeds])["y"] > 1e-2
    assert noise_floor(smooth, feeds, [smooth(f) for f in feeds])["y"] < 1e-5


def test_first_line_keeps_the_cause_of_a_tensorflow_error():
    from tfopt.errors import first_line

    message = ("Graph execution error:\n\nDetected at node Gather defined at (most recent "
               "call last):\n  File \"m.py\", line 4, in f\n\nindices[0,0] = 6 is not in "
               "[0, 2)\n\t [[{{node Gather}}]] [Op:__inference_f_12]")
    assert first_line(RuntimeError(message)) == \
        "Graph execution error: indices[0,0] = 6 is not in [0, 2)"


@pytest.fixture(scope="module")
def domain_models(tmp_path_factory):
    import keras

    root = tmp_path_factory.mktemp("domains")
    keras.utils.set_random_seed(0)
    pixels = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(pixels)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    image = keras.Model(pixels, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x)))
    image.get_layer(index=-3).moving_mean.assign(np.full(8, 0.3, np.float32))

    ids = keras.Input((None,), dtype="int32", name="token_ids")
    segments = keras.Input((None,), dtype="int32", name="segment_ids")
    mask = keras.Input((None,), dtype="int32", name="padding_mask")
    hidden = keras.layers.Embedding(50, 8)(ids) + keras.layers.Embedding(2, 8)(segments)
    import tensorflow as tf

    ops = keras.ops if compat.keras_major() >= 3 else tf  # Keras 2 takes tf ops symbolically
    hidden = hidden * ops.expand_dims(ops.cast(mask, "float32"), -1)
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(8, "gelu")(hidden))
    encoder = keras.Model({"token_ids": ids, "segment_ids": segments, "padding_mask": mask},
                          keras.layers.Dense(3)(pooled))
    paths = {"image": root / "image.keras", "encoder": root / "encoder.keras"}
    image.save(paths["image"])
    encoder.save(paths["encoder"])
    return paths


def test_pixel_inputs_are_drawn_in_0_255(domain_models, tmp_path):
    import tfopt

    result = tfopt.freeze(domain_models["image"], tmp_path / "out")
    drawn = result.verification["drawn"]["image"]
    assert "uniform 0..255" in drawn["drawn"] and drawn["shape"] == [1, 16, 16, 3]
    assert result.exit_code == 0, [a.parity.reason for a in result.artifacts if a.parity]


def test_an_encoder_with_a_two_row_segment_table_converts_with_default_flags(
        domain_models, tmp_path):
    import tfopt

    result = tfopt.freeze(domain_models["encoder"], tmp_path / "out")
    drawn = result.verification["drawn"]
    assert "0..1" in drawn["segment_ids"]["drawn"] and "0..49" in drawn["token_ids"]["drawn"]
    assert "ones" in drawn["padding_mask"]["drawn"]
    assert drawn["token_ids"]["shape"] == [1, 16]  # a sequence, not one token
    assert [t.name for t in result.inputs] == ["padding_mask", "segment_ids", "token_ids"]
    assert result.exit_code == 0, [(a.format, a.error or a.parity.reason)
                                   for a in result.artifacts]


def test_a_deep_image_net_with_large_logits_converts_with_default_flags(tmp_path):
    """EfficientNetB0 with random weights and batch norm calibrated on 0-255 images: logits
    near 70, float reordering moves them by ~1e-3, and on standard-normal noise the original
    itself is erratic. Default flags must pass it, on pixels, by the scale-aware rule."""
    import keras

    import tfopt

    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3),
                                              classes=10, classifier_activation=None)
    for layer in model.layers:  # one training-mode call sets the moving statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    rng = np.random.default_rng(0)
    model(rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32), training=True)
    noise = rng.standard_normal((1, 32, 32, 3)).astype(np.float32)
    moved = np.abs(model(np.nextafter(noise, np.inf)).numpy() - model(noise).numpy()).max()
    # one ulp of noise moves the original's outputs far past 1e-4 (Keras 2's EfficientNetB0,
    # on TF 2.15, by 6.4e-3)
    assert moved > (1e-2 if compat.keras_major() >= 3 else 3e-3)
    model.save(tmp_path / "effnet.keras")

    result = tfopt.freeze(tmp_path / "effnet.keras", tmp_path / "out")
    assert result.exit_code == 0, [(a.format, a.error or a.parity.reason)
                                   for a in result.artifacts]
    (drawn,) = result.verification["drawn"].values()  # Keras numbers the input's name
    assert "uniform 0..255" in drawn["drawn"]
    assert result.verification["rule"] == "scale" and result.verification["batch"] == 3
    for artifact in result.artifacts:
        out = artifact.parity.outputs["predictions"]
        assert out["scale"] > 30 and out["max_abs_err"] <= out["tolerance"], out
        assert artifact.batch == {"verified": [1, 3]}


def test_a_scalar_output_converts_and_verifies_on_every_target(tmp_path):
    """A reduce_sum of the whole input: one value per call, whatever the batch."""
    import tensorflow as tf

    import tfopt

    class Total(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"total": tf.reduce_sum(x)}

    module = Total()
    tf.saved_model.save(module, str(tmp_path / "total"),
                        signatures={"serving_default": module.serve})
    result = tfopt.freeze(tmp_path / "total", tmp_path / "out")
    assert result.exit_code == 0, [(a.format, a.error) for a in result.artifacts]
    assert result.outputs[0].shape == ()
    for artifact in result.artifacts:
        assert artifact.parity.passed and artifact.batch == {"verified": [1, 3]}
        assert artifact.parity.outputs["total"]["scale"] > 0


def _any_size_module(path, halves: bool, odd_noise: bool = False):
    """A channels-last net taking any image size: conv, relu, then a global mean (or, with
    halves, a pool and an upsample back, which runs at even sizes only; with odd_noise, a
    different output on every run at odd heights, as a TF kernel bug can give)."""
    import tensorflow as tf

    kernel = np.random.default_rng(3).normal(0, 0.4, (3, 3, 3, 4)).astype(np.float32)

    class AnySize(tf.Module):
        def __init__(self):
            self.kernel = tf.Variable(kernel)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32,
                                                    name="image")])
        def serve(self, image):
            h = tf.nn.relu(tf.nn.conv2d(image, self.kernel, 1, "SAME"))
            if halves:
                small = tf.nn.max_pool2d(h, 2, 2, "VALID")
                return {"map": tf.repeat(tf.repeat(small, 2, axis=1), 2, axis=2) + h}
            mean = tf.reduce_mean(h, [1, 2])
            if odd_noise:
                odd = tf.cast(tf.shape(image)[1] % 2, tf.float32)
                mean += odd * tf.random.uniform(tf.shape(mean))
            return {"mean": mean}

    module = AnySize()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.mark.parametrize("halves, odd_noise, second, note", [
    (False, False, [1, 29, 37, 3], None),
    (True, False, [1, 48, 64, 3], "the original does not run at {'image': [1, 29, 37, 3]}"),
    (False, True, [1, 48, 64, 3], "the original gives other outputs on a second run at "
                                  "{'image': [1, 29, 37, 3]}, so nothing can be judged there"),
])
def test_inputs_of_any_size_are_verified_at_a_second_size(tmp_path, halves, odd_noise,
                                                          second, note):
    """Odd and non-square first; a net that halves and doubles runs only at even sizes, and
    one whose original is not deterministic at odd sizes cannot be judged there, so they
    are verified at the next size of SECOND_SIZES (and the report says why), not at one."""
    import tfopt

    source = _any_size_module(tmp_path / "model", halves, odd_noise)
    result = tfopt.freeze(source, tmp_path / "out", targets=["onnx", "pb"] if odd_noise
                          else list(tfopt.FreezeOptions().targets))
    assert result.exit_code == 0, [(a.format, a.error) for a in result.artifacts]
    shapes = [{"image": [1, 32, 32, 3]}, {"image": second}]
    assert result.verification["shapes"] == shapes
    notes = result.verification["notes"]
    assert (notes[0].startswith(note) if note else not notes), notes
    for artifact in result.artifacts:
        assert artifact.shapes == {"verified": shapes}, artifact.format
        assert artifact.parity.samples == 3 and artifact.parity.passed
