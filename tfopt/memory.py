"""How the process holds memory between stages: the garbage collector kept off the objects
that were there before, and freed heap handed back to the system."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import threading
from collections.abc import Iterator


@functools.cache
def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (musl, macOS): nothing to hand back
        return None


M_MMAP_THRESHOLD = -3  # mallopt's parameter (glibc's malloc.h)
MAPPED_FROM = 1 << 20  # blocks from 1 MiB up get a mapping of their own...
MAPPED_SOURCES = 256 << 20  # ...in a run whose source is this large on disk


def map_large_blocks(source_bytes: int) -> bool:
    """For a large source, give every heap block of MAPPED_FROM or more a mapping of its
    own, returned to the system when freed, for the rest of the process; True if so.
    glibc's own threshold grows to 32 MiB once such a block was freed, and a transformer's
    kernels (1-32 MiB) then leave holes in the heap that later stages do not fill:
    BERT-base --to tflite peaked at 3.5-4.0 GB, and at 3.1 GB with them mapped, for a
    quarter more time (page faults), which on ResNet50 (98 MB) bought 3 %."""
    libc = _glibc()
    if libc is None or source_bytes < MAPPED_SOURCES:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MAPPED_FROM))


def return_freed_memory() -> None:
    """Collect garbage and return the freed heap to the system, so that the next stage (the
    TFLite converter, the ONNX checker) starts from what is alive, not from the last peak;
    glibc keeps freed heap in its arenas, and only malloc_trim gives it back."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


_frozen_depth = 0
_froze = False
_frozen_lock = threading.Lock()


@contextlib.contextmanager
def older_objects_frozen() -> Iterator[None]:
    """Let the garbage collector skip every object that exists on entry: TF's own hundreds
    of thousands would otherwise be traversed again by each full collection, which made
    building a name -> node dict of a 100k-node graph ten times slower per node. Nests, also
    across threads; leaves a process that froze objects itself (gc.freeze before a fork) as
    it was."""
    global _frozen_depth, _froze
    with _frozen_lock:
        if _frozen_depth == 0:
            _froze = gc.get_freeze_count() == 0
            if _froze:
                gc.freeze()
        _frozen_depth += 1
    try:
        yield
    finally:
        with _frozen_lock:
            _frozen_depth -= 1
            if _frozen_depth == 0 and _froze:
                gc.unfreeze()
