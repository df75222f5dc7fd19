"""A small CNN trained on scikit-learn's digits (shipped with the package: no download), the
real task behind the quantization test and bench."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from zoo import save_serving


def split(seed: int = 0):
    """(x_train, y_train, x_test, y_test): 8x8x1 images scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    return train_test_split(x, digits.target.astype(np.int64), test_size=0.3,
                            random_state=seed, stratify=digits.target)


def train(directory: Path, epochs: int = 25, seed: int = 0) -> tuple[Path, dict]:
    """Train, export a SavedModel and write train/test .npz files; returns (model dir,
    {"calibration", "eval", "accuracy"})."""
    import keras

    x_train, x_test, y_train, y_test = split(seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(16, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    saved = directory / "digits_cnn"
    save_serving(model, saved)
    calibration, evaluation = directory / "calibration.npz", directory / "eval.npz"
    np.savez(calibration, image=x_train[:200])
    np.savez(evaluation, image=x_test, labels=y_test)
    return saved, {"calibration": calibration, "eval": evaluation, "accuracy": accuracy}
