"""Keeping library noise away from the user unless they ask for it with --debug."""
from __future__ import annotations

import contextlib
import logging
import os
import warnings

_debug = False


def set_debug(enabled: bool) -> None:
    global _debug
    _debug = enabled


@contextlib.contextmanager
def native_stderr_silenced():
    """Hide what C++ code writes to fd 2 (converter dumps, TF start-up lines) unless --debug."""
    if _debug:
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_libraries(debug: bool) -> None:
    """Quiet TF, tf2onnx and friends; call before TensorFlow is imported."""
    set_debug(debug)
    if debug:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore")
    # tfopt's own warnings (--unsafe-keras, --calibration random) still reach the user
    warnings.filterwarnings("default", module=r"tfopt(\.|$)")
    warnings.formatwarning = lambda message, *_, **__: f"tfopt: warning: {message}\n"
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # tf2onnx logs "Unsupported ops" at ERROR; our one-line error names them already
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
    with native_stderr_silenced():
        import tensorflow  # noqa: F401  (its C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL)
