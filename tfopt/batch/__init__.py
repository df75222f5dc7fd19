"""Batch conversion: many models, each in a worker process, resumable, with a summary.

    tfopt batch SOURCES... -o OUT [--workers N] [--timeout S] [--executor local|ray]

A source is a directory whose children are models, a glob, or a manifest (.jsonl, .csv,
.toml) whose rows give `src` and per-model options (FreezeOptions fields). Every model is
converted by `tfopt.freeze` into OUT/<name>/; OUT/summary.{json,csv,md} has one row per
model x target. jobs.py finds the models, executors.py runs them, summary.py reports.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tfopt.batch.executors import LocalExecutor, RayExecutor
from tfopt.batch.jobs import Job, content_key, discover
from tfopt.batch.state import STATE_DIR, read_state, record_state
from tfopt.batch.summary import BatchProgress, write_summary
from tfopt.errors import EXIT_SOME_FAILED
from tfopt.files import path_bytes
from tfopt.options import FreezeOptions
from tfopt.reporting.output import remove_stale_staging


@dataclass
class BatchResult:
    records: list[dict]
    skipped: list[str]
    out_dir: str
    seconds: float

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r["status"] != "ok"]

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else 0


def run_batch(sources: list[str], out_dir: str | os.PathLike, *, workers: int | None = None,
              executor: str = "local",
              address: str | None = None, force: bool = False, fail_fast: bool = False,
              ray_cpus: float = 1.0, ray_memory_mb: int = 4096, progress: Any = None,
              options: FreezeOptions | None = None, **overrides: Any) -> BatchResult:
    """Convert many models; the Python API behind `tfopt batch`.

    options (or FreezeOptions fields as keywords: targets, quantize, timeout, max_memory,
    ...) apply to every model; a manifest row overrides them for its model. A model's
    `timeout` and `max_memory` bound its worker process (no limit by default here; the
    command line's defaults are in tfopt/limits.py). Models whose source, options and tfopt
    version are unchanged since they last converted are skipped unless `force`.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    jobs = discover(list(sources), replace(options or FreezeOptions(), **overrides).validate())
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)  # left by workers killed in an earlier run
    records, todo, skipped = [], [], []
    for job in jobs:
        job.key = content_key(job)
        previous = read_state(out, job.name)
        if not force and previous and previous.get("key") == job.key \
                and previous.get("status") == "ok" and (out / job.name).is_dir():
            records.append(dict(previous, skipped=True))
            skipped.append(job.name)
        else:
            todo.append(job.__dict__.copy())
    progress = progress or BatchProgress(len(jobs), len(skipped))
    stop = {"flag": False}

    def on_done(record: dict) -> bool:
        record = record_state(out, record)
        records.append(record)
        progress.update(record)
        if record["status"] != "ok" and fail_fast:
            stop["flag"] = True
        return not stop["flag"]

    # largest sources first: with several workers, a big model started last would finish last
    todo.sort(key=lambda job: -path_bytes(Path(job["src"])))
    if todo:
        runner = RayExecutor(address, ray_cpus, ray_memory_mb) if executor == "ray" \
            else LocalExecutor(workers or os.cpu_count() or 1)
        runner.run(todo, str(out), on_done)
    progress.close()
    order = {j.name: i for i, j in enumerate(jobs)}
    records.sort(key=lambda r: order.get(r["name"], len(order)))
    result = BatchResult(records, skipped, str(out), round(time.perf_counter() - start, 2))
    write_summary(out, result.records, result.failed, result.skipped, result.seconds)
    return result


__all__ = ["EXIT_SOME_FAILED", "BatchResult", "Job", "run_batch"]
