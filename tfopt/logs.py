"""Keeping library noise away from the user unless they ask for it with --debug."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings

_debug = False


def set_debug(enabled: bool) -> None:
    global _debug
    _debug = enabled


@contextlib.contextmanager
def native_stderr_silenced():
    """Hide what C++ code writes to fd 2 (converter dumps, TF start-up lines) unless --debug."""
    try:
        saved = -1 if _debug else os.dup(2)
    except OSError:  # no fd 2 (closed by the caller): nothing to hide
        saved = -1
    if saved < 0:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# a C++ log line of TF/XLA (`2026-01-01 12:00:00.000000: W path.cc:12] ...`) or absl's
# (`I0000 00:00:1700000000.000000  123 path.cc:67] ...`), below FATAL
NATIVE_LOG_LINE = re.compile(
    rb"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\]"
    rb"|[IWE]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)")


def filter_native_log_lines(raw: int, sink: int) -> None:
    """Copy lines from fd `raw` to fd `sink`, leaving out C++ log lines, until EOF."""
    with os.fdopen(raw, "rb") as lines:
        for line in lines:
            if not NATIVE_LOG_LINE.match(line):
                os.write(sink, line)


def stderr_open() -> bool:
    """Whether fd 2 was open; if the caller closed it, /dev/null takes it (else the first
    file the run opens would, and receive the log lines) and Python gets a sys.stderr."""
    try:
        os.fstat(2)
        return True
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY)
        if null != 2:
            os.dup2(null, 2)
            os.close(null)
        if sys.stderr is None:  # Python's own, None without fd 2 at start-up
            sys.stderr = sys.__stderr__ = os.fdopen(os.dup(2), "w")  # type: ignore[misc]
        return False


_filtered = False


def filter_native_stderr() -> None:
    """For the life of a command's process, fd 2 goes through a thread that drops the C++
    log lines of TF, XLA and absl (absl writes those logged before its InitializeLog
    whatever TF_CPP_MIN_LOG_LEVEL says: TF 2.19's Grappler does); every other line, a
    fatal error's included, reaches the terminal. Python's sys.stderr writes there directly.
    Left alone where sys.stderr is not the process's own (a test capturing it)."""
    global _filtered
    if not stderr_open():
        return
    current = sys.stderr
    if _filtered or current is not sys.__stderr__ or current is None:
        return
    current.flush()
    terminal = os.dup(2)
    raw, pipe = os.pipe()
    os.dup2(pipe, 2)
    os.close(pipe)
    sys.stderr = sys.__stderr__ = os.fdopen(  # type: ignore[misc]
        os.dup(terminal), "w", buffering=1, encoding=current.encoding,
        errors="backslashreplace")
    threading.Thread(target=filter_native_log_lines, args=(raw, terminal), daemon=True,
                     name="tfopt-native-stderr").start()
    _filtered = True


def quiet_libraries(debug: bool) -> None:
    """Quiet TF, tf2onnx and friends; call before TensorFlow is imported."""
    quiet_python(debug)
    if debug:
        return
    filter_native_stderr()
    with native_stderr_silenced():
        import tensorflow  # noqa: F401  (its C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL)


def quiet_python(debug: bool) -> None:
    """The part of quiet_libraries that starts no thread and imports no library: what a
    supervisor that forks the run's worker can do before the fork."""
    stderr_open()
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
