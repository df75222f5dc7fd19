"""Keras 3 recurrent layers: TFLite with builtin ops only, ONNX with native LSTM/GRU ops, both
checked against Keras at two sequence lengths."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import save_serving

from tfopt.exporters.tflite import interpreter, op_names


def build(kind: str):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, 5), name="seq")  # any sequence length
    if kind == "lstm_gru":
        h = keras.layers.GRU(6)(keras.layers.LSTM(8, return_sequences=True)(inputs))
    elif kind == "bidirectional_lstm":
        h = keras.layers.Bidirectional(keras.layers.LSTM(7))(inputs)
    elif kind == "bidirectional_gru":  # two loops whose tensor lists look identical
        h = keras.layers.Bidirectional(keras.layers.GRU(6, return_sequences=True))(inputs)
    elif kind == "simple_rnn":
        h = keras.layers.SimpleRNN(9, return_sequences=True)(inputs)
    elif kind == "gru_reset_before":
        h = keras.layers.GRU(6, reset_after=False)(inputs)
    else:  # gru_reset_after
        h = keras.layers.GRU(6, reset_after=True, return_sequences=True)(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


KINDS = ["lstm_gru", "bidirectional_lstm", "bidirectional_gru", "simple_rnn", "gru_reset_before",
         "gru_reset_after"]
NATIVE = {"lstm_gru": {"LSTM", "GRU"}, "bidirectional_lstm": {"LSTM"},
          "bidirectional_gru": {"GRU"}, "simple_rnn": set(),
          "gru_reset_before": {"GRU"}, "gru_reset_after": {"GRU"}}


@pytest.mark.parametrize("kind", KINDS)
def test_recurrent_model_converts_to_builtins_and_native_ops(kind, tmp_path):
    import onnxruntime

    import tfopt

    model = build(kind)
    save_serving(model, str(tmp_path / "model"))
    result = tfopt.freeze(tmp_path / "model", tmp_path / "out", targets=["tflite", "onnx"])
    assert result.exit_code == 0, result.summary()
    tflite, onnx = result.artifact("tflite"), result.artifact("onnx")
    if kind == "bidirectional_gru":  # merged, tf2onnx lost the second loop's list
        (dedupe,) = [p for p in result.passes if p.name == "dedupe"]
        assert any("each loop fills its own TensorListReserve" in s["reason"]
                   for s in dedupe.skipped), dedupe.skipped

    # TFLite: builtin ops only (no Flex or custom op), the standard interpreter runs it
    ops = op_names(Path(tflite.path))
    from tensorflow.lite.python import schema_py_generated as schema

    builtins = {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")}
    assert set(ops) <= builtins and "WHILE" in ops, ops
    # ONNX: LSTM and GRU as native ops, no generic loop left for them
    assert NATIVE[kind] <= set(onnx.ops), onnx.ops
    if NATIVE[kind]:
        assert not {"Loop", "Scan"} & set(onnx.ops), onnx.ops

    # the report says how each recurrent layer was converted, per target
    assert tflite.recurrent and all("WHILE" in r["conversion"] for r in tflite.recurrent)
    assert {r["op"] for r in onnx.recurrent} == (NATIVE[kind] or {"Loop"})

    # parity with Keras at two sequence lengths: the time dimension stays dynamic
    session = onnxruntime.InferenceSession(onnx.path, providers=["CPUExecutionProvider"])
    runner = interpreter(Path(tflite.path)).get_signature_runner(
        "serving_default")
    rng = np.random.default_rng(1)
    for steps in (4, 11):
        x = rng.standard_normal((2, steps, 5)).astype(np.float32)
        expected = model(x, training=False).numpy()
        np.testing.assert_allclose(session.run(None, {"seq": x})[0], expected, atol=1e-5)
    # the TFLite artifact takes any batch (tensor lists sized at run time), batch 1 and 4
    assert tflite.fallback is None and tflite.batch == {"verified": [1, 3]}, tflite.batch
    for batch in (1, 4):
        x = rng.standard_normal((batch, 7, 5)).astype(np.float32)
        got = next(iter(runner(seq=x).values()))
        np.testing.assert_allclose(got, model(x, training=False).numpy(), atol=1e-5)
