"""Shared fixtures: conversions are done once per session, since each costs seconds."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "saved_models"
sys.path.insert(0, str(ROOT / "scripts"))

from zoo import randomize, save_serving  # noqa: E402, F401  (the bench zoo, shared with the tests)


def tree_digest(path: Path) -> str:
    """A hash of every file's name and bytes under path: proof the source was not modified."""
    from tfopt.files import tree_digest as digest

    return digest(path)


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
