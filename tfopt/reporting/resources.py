"""Seconds and memory per stage of a run, for report.json's `resources`.

Peak RSS during a stage is sampled every 10 ms from /proc/self/statm (Linux), so a spike
shorter than that can be missed; `process_peak_rss_mb` is the kernel's exact high-water mark
for the whole process (getrusage ru_maxrss), which includes whatever ran before tfopt.
"""
from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Iterator

from tfopt.memory import older_objects_frozen, return_freed_memory
from tfopt.reporting.progress import Progress

SAMPLE_SECONDS = 0.01
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float | None:
    """The process's resident set now, or None where /proc is missing."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE / 2**20
    except (OSError, ValueError, IndexError):
        return None


def process_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


class Stages:
    """Shows each stage through a Progress and records its seconds and peak RSS."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.records: list[dict] = []
        self.large_blocks_mapped = False  # memory.map_large_blocks applied to the run

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start_rss = rss_mb()
        peak = [start_rss or 0.0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(SAMPLE_SECONDS):
                now = rss_mb()
                if now is not None and now > peak[0]:
                    peak[0] = now

        sampler = threading.Thread(target=sample, daemon=True)
        start = time.perf_counter()
        sampler.start()
        try:
            with self.progress.stage(name), older_objects_frozen():
                yield
        finally:
            return_freed_memory()  # the next stage starts from what this one left alive
            done.set()
            sampler.join()
            end_rss = rss_mb()
            self.records.append({
                "stage": name, "seconds": round(time.perf_counter() - start, 3),
                "rss_start_mb": None if start_rss is None else round(start_rss, 1),
                "peak_rss_mb": None if start_rss is None else round(max(peak[0],
                                                                       end_rss or 0), 1)})

    def report(self) -> dict:
        return {"stages": self.records, "process_peak_rss_mb": round(process_peak_mb(), 1),
                "peak_rss": "sampled every 10 ms from /proc/self/statm; process_peak_rss_mb "
                            "is getrusage's exact high-water mark",
                "large_blocks_mapped": self.large_blocks_mapped}
