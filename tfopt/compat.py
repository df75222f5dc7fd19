"""Where the TensorFlow releases tfopt supports differ, one function per difference.

The rest of tfopt calls these and never tests a version itself; each has a test in
tests/test_compat.py that runs on every TensorFlow in CI's matrix.
"""
from __future__ import annotations

import functools
import re
import warnings
from typing import Any

from tfopt.errors import UsageError

OLDEST = (2, 15)  # the oldest TensorFlow tfopt supports
NEWEST_TESTED = (2, 22)


def _release(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()  # type: ignore[union-attr]
    return int(major), int(minor)


@functools.cache
def tf_version() -> tuple[int, int]:
    import tensorflow as tf

    return _release(tf.__version__)


def check_tensorflow() -> None:
    """Refuse a TensorFlow older than the range; say once when it is newer than tested."""
    import tensorflow as tf

    found = tf_version()
    if found < OLDEST:
        raise UsageError(f"TensorFlow {tf.__version__} is older than tfopt supports; install "
                         f"tensorflow>={OLDEST[0]}.{OLDEST[1]}")
    if found > NEWEST_TESTED:
        warnings.warn(f"TensorFlow {tf.__version__} is newer than the releases tfopt was tested "
                      f"with ({OLDEST[0]}.{OLDEST[1]} to {NEWEST_TESTED[0]}.{NEWEST_TESTED[1]})",
                      stacklevel=2)


@functools.cache
def keras_major() -> int:
    """3 for Keras 3 (TF 2.16 on), 2 for the Keras that TF 2.15 imports as `keras`."""
    import keras

    return _release(keras.__version__)[0]


def nest() -> Any:
    """keras.tree, or tf.nest under Keras 2 (which has no keras.tree): the two agree on
    is_nested and pack_sequence_as, which is what tfopt calls."""
    if keras_major() >= 3:
        import keras

        return keras.tree
    import tensorflow as tf

    return tf.nest


def fingerprint_has_uuid() -> bool:
    """A SavedModel's fingerprint.pb holds a random `uuid` from TF 2.19 on; before, the file is
    content hashes alone, the same for the same model."""
    from tensorflow.core.protobuf import fingerprint_pb2

    return "uuid" in fingerprint_pb2.FingerprintDef.DESCRIPTOR.fields_by_name


def tflite_interpreter_class() -> Any:
    """LiteRT's interpreter; tf.lite.Interpreter (deprecated from TF 2.20, warns) where
    ai-edge-litert is not installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        return tf.lite.Interpreter
    return Interpreter
