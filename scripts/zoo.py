"""The benchmark zoo: keras.applications architectures built with weights=None (nothing is
downloaded), given trained-looking weights so that folding bugs and dead outputs show."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# name -> (keras.applications constructor, input size): reduced sizes keep the bench short
ARCHITECTURES = {
    "MobileNetV2": ("MobileNetV2", 96),
    "MobileNetV3Small": ("MobileNetV3Small", 96),
    "EfficientNetB0": ("EfficientNetB0", 96),
    "ResNet50": ("ResNet50", 64),
    "DenseNet121": ("DenseNet121", 64),
    "InceptionV3": ("InceptionV3", 75),
    "NASNetMobile": ("NASNetMobile", 96),
    "ConvNeXtTiny": ("ConvNeXtTiny", 64),
}


def randomize(model, seed: int = 0) -> None:
    """Give a freshly built Keras model trained-looking weights: non-zero biases, random BN
    affine terms, and BN statistics taken from a real batch.

    With default initializers, BN is an identity and biases are zero, so folding bugs would
    hide; with made-up statistics, activations vanish and every input gives the same output.
    """
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for weight in layer.weights:
            name = weight.path if hasattr(weight, "path") else weight.name
            dtype = tf.as_dtype(weight.dtype).as_numpy_dtype  # Keras 2 gives a tf.DType
            if "beta" in name or "bias" in name:
                weight.assign(rng.normal(0, 0.1, weight.shape).astype(dtype))
            elif "gamma" in name:
                weight.assign(rng.uniform(0.8, 1.2, weight.shape).astype(dtype))
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0  # the next training-mode call sets the moving stats to batch stats
    shape = (8,) + tuple(model.inputs[0].shape[1:])
    model(rng.standard_normal(shape).astype(np.float32), training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum


def build(name: str, classes: int = 10):
    """A randomized keras.applications model of the zoo."""
    import keras

    constructor, size = ARCHITECTURES[name]
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, constructor)(weights=None, input_shape=(size, size, 3),
                                                     classes=classes)
    randomize(model)
    return model


def export(name: str, directory: Path) -> Path:
    """The zoo model as a TF2 SavedModel (what both tfopt and the peers read)."""
    path = directory / name
    save_serving(build(name), path)
    return path


def save_serving(model, path) -> None:
    """`model.export(path)`, quiet: Keras 3 prints its signature unless told not to; Keras 2
    (TF 2.15) prints nothing and has no such argument."""
    from tfopt import compat

    quiet = {"verbose": False} if compat.keras_major() >= 3 else {}
    model.export(str(path), **quiet)
