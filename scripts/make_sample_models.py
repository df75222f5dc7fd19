"""Regenerate the bundled samples in saved_models/ (each under 1 MB).

    python scripts/make_sample_models.py [OUT_DIR]

- keras_cnn: Conv+BN+ReLU blocks and a Dense head, trained a few steps, saved with
  tf.saved_model.save so the optimizer state is in the checkpoint.
- debug_module: a tf.Module whose serving function carries tf.print, asserts,
  check_numerics and a v1 summary op through control dependencies, plus a `train` signature.
- lstm_gru: a Keras LSTM+GRU sequence classifier, written with keras Model.export.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from keras import layers


def keras_cnn(path: Path) -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = inputs
    for filters in (8, 16, 32):
        x = layers.Conv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(32, activation="relu")(x)
    outputs = layers.Dense(10, activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name="keras_cnn")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.random((64, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, 64),
              epochs=2, batch_size=16, verbose=0)
    tf.saved_model.save(model, str(path))


class DebugModule(tf.Module):
    """A dense layer whose serving path is wrapped in debug ops, with a training signature."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(1)
        self.w = tf.Variable(rng.standard_normal((8, 4)).astype(np.float32), name="w")
        self.b = tf.Variable(np.zeros(4, np.float32), name="b")

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def serve(self, x):
        checked = tf.debugging.check_numerics(x, "x has NaN or Inf")
        logits = tf.matmul(checked, self.w) + self.b
        summary = tf.compat.v1.summary.scalar("mean_logit", tf.reduce_mean(logits))
        shows = tf.print("logits:", tf.shape(logits))
        positive = tf.debugging.assert_positive(tf.shape(x)[0], message="empty batch")
        with tf.control_dependencies([summary, shows, positive]):
            scores = tf.identity(tf.nn.sigmoid(logits))
        return {"scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x"),
                                  tf.TensorSpec([None, 4], tf.float32, name="y")])
    def train(self, x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.matmul(x, self.w) + self.b - y))
        gw, gb = tape.gradient(loss, [self.w, self.b])
        self.w.assign_sub(0.01 * gw)
        self.b.assign_sub(0.01 * gb)
        return {"loss": loss}


def debug_module(path: Path) -> None:
    module = DebugModule()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve,
                                                       "train": module.train})


def lstm_gru(path: Path) -> None:
    keras.utils.set_random_seed(2)
    inputs = keras.Input((12, 6), name="sequence")
    x = layers.LSTM(16, return_sequences=True)(inputs)
    x = layers.GRU(16)(x)
    outputs = layers.Dense(3, activation="softmax", name="label")(x)
    model = keras.Model(inputs, outputs, name="lstm_gru")
    model.export(str(path), verbose=False)


SAMPLES = {"keras_cnn": keras_cnn, "debug_module": debug_module, "lstm_gru": lstm_gru}


def main(out: Path) -> None:
    for name, build in SAMPLES.items():
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        build(target)
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        print(f"{target}: {size / 1024:.0f} KB")
        assert size < 1 << 20, f"{name} is over 1 MB"


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent / "saved_models")
