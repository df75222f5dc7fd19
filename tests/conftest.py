"""Shared fixtures: conversions are done once per session, since each costs seconds."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "saved_models"


def tree_digest(path: Path) -> str:
    """A hash of every file's name and bytes under path: proof the source was not modified."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() \
            else [Path(path)]:
        digest.update(str(file.relative_to(path) if Path(path).is_dir() else file.name).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def randomize(model, seed: int = 0) -> None:
    """Give a freshly built Keras model trained-looking weights: non-zero biases, random BN
    affine terms, and BN statistics taken from a real batch.

    With default initializers, BN is an identity and biases are zero, so folding bugs would
    hide; with made-up statistics, activations vanish and every input gives the same output.
    """
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for weight in layer.weights:
            name = weight.path if hasattr(weight, "path") else weight.name
            if "beta" in name or "bias" in name:
                weight.assign(rng.normal(0, 0.1, weight.shape).astype(weight.dtype))
            elif "gamma" in name:
                weight.assign(rng.uniform(0.8, 1.2, weight.shape).astype(weight.dtype))
    norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    momenta = [l.momentum for l in norms]
    for layer in norms:
        layer.momentum = 0.0  # the next training-mode call sets the moving stats to batch stats
    shape = (8,) + tuple(model.inputs[0].shape[1:])
    model(rng.standard_normal(shape).astype(np.float32), training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum


@pytest.fixture(scope="session")
def freeze_once(tmp_path_factory):
    """freeze_once(key, src, **options) converts once per session and returns the result."""
    import tfopt

    cache = {}

    def run(key: str, src, **options):
        if key not in cache:
            out = tmp_path_factory.mktemp("out") / key
            cache[key] = tfopt.freeze(src, out, **options)
        return cache[key]
    return run


@pytest.fixture(scope="session")
def mobilenet_v2(tmp_path_factory) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), classes=10)
    randomize(model)
    path = tmp_path_factory.mktemp("keras") / "mobilenet_v2.keras"
    model.save(path)
    return path
