"""A model that the TFLite converter turns into Flex ops only because of unknown dimensions
(a causal mask sliced to a dynamic length) gets a builtins-only TFLite with those
dimensions fixed to the verification shape, which the report and the note name, with the
--input-shape that chooses another size."""
from __future__ import annotations

import pytest
from zoo import save_serving


@pytest.fixture(scope="module")
def causal_decoder(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(50, 16)(tokens)
    x = x + keras.layers.MultiHeadAttention(2, 8)(x, x, use_causal_mask=True)
    outputs = keras.layers.Dense(50)(keras.layers.LayerNormalization()(x))
    path = tmp_path_factory.mktemp("dynamic") / "decoder"
    save_serving(keras.Model(tokens, outputs), path)
    return path


def test_unknown_length_falls_back_to_the_verification_shape(causal_decoder, tmp_path):
    import tfopt

    result = tfopt.freeze(causal_decoder, tmp_path / "out")
    assert result.exit_code == 0, [(a.format, a.error) for a in result.artifacts]
    by_format = {a.format: a for a in result.artifacts}
    tflite = by_format["tflite"]
    assert not any(op.startswith("Flex") for op in tflite.ops)
    if tflite.fallback is None:  # Keras 2 (TF 2.15) builds a causal mask the builtins slice
        assert len(tflite.shapes["verified"]) == 2 and "limit" not in tflite.shapes
        return
    assert tflite.fallback == "fixed_shape"
    assert tflite.shapes["verified"] == [{"token_ids": [1, 16]}]
    assert "--input-shape token_ids=1,16" in tflite.shapes["limit"]
    assert tflite.batch["verified"] == [1] and "limit" in tflite.batch
    assert "--input-shape token_ids=1,16" in tflite.note
    # the other targets take any length, and were checked at a second one
    assert len(by_format["onnx"].shapes["verified"]) == 2


def test_a_given_length_needs_no_fallback(causal_decoder, tmp_path):
    import tfopt

    result = tfopt.freeze(causal_decoder, tmp_path / "out", targets=["tflite"],
                          input_shapes={"token_ids": (1, 24)})
    (tflite,) = result.artifacts
    assert result.exit_code == 0 and tflite.fallback is None
    assert tflite.shapes["verified"] == [{"token_ids": [1, 24]}]
