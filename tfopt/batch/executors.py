"""Where batch jobs run: local worker processes (isolated, with timeouts) or Ray tasks.
Both call `convert`, which never raises: a model's failure is its record."""
from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from tfopt.errors import TfoptError, UsageError, first_line

OnDone = Callable[[dict], bool]  # takes a finished record; False stops the batch


def convert(job: dict, out_dir: str) -> dict:
    """One model, in whatever process runs it: never raises, returns the model's record."""
    import tfopt

    start = time.perf_counter()
    record = {"name": job["name"], "src": job["src"], "key": job["key"], "pid": os.getpid()}
    try:
        result = tfopt.freeze(job["src"], Path(out_dir) / job["name"],
                              **dict(job["options"], overwrite=True))
    except TfoptError as exc:
        return dict(record, status="failed", cause="bad input", error=first_line(exc),
                    seconds=round(time.perf_counter() - start, 2), rows=[])
    except Exception as exc:  # a bug or a library failure: keep the batch going
        return dict(record, status="failed", cause="internal error",
                    error=f"{type(exc).__name__}: {first_line(exc)}",
                    seconds=round(time.perf_counter() - start, 2), rows=[])
    rows = [{"target": a.format, "status": a.status, "error": a.error, "bytes": a.bytes,
             "nodes": a.nodes, "precision": a.precision,
             "max_abs_err": a.parity.max_abs_err if a.parity else None,
             "parity": (a.parity.passed if a.parity else None), "seconds": a.seconds}
            for a in result.artifacts]
    status = "ok" if result.exit_code == 0 else "failed"
    cause = None if status == "ok" else \
        "target failed" if result.failed_targets else "parity"
    errors = [f"{a.format}: {a.error}" for a in result.artifacts if a.error] + \
        [f"{f}: {result.artifact(f).parity.reason}" for f in result.parity_failures]
    return dict(record, status=status, cause=cause, error="; ".join(errors) or None,
                seconds=round(time.perf_counter() - start, 2), rows=rows)


def _worker(connection: Any) -> None:
    """A local worker: imports TF once, then converts the jobs it is sent until None."""
    from tfopt.logs import quiet_libraries

    quiet_libraries(False)
    import tfopt.api  # noqa: F401  (the import cost is paid once per worker)

    while True:
        message = connection.recv()
        if message is None:
            return
        job, out_dir = message
        connection.send(convert(job, out_dir))


class LocalExecutor:
    """N worker processes; a job that crashes or outlives the timeout costs its worker,
    which is replaced, and becomes a failed record."""

    def __init__(self, workers: int, timeout: float | None):
        self.size, self.timeout = workers, timeout
        self.context = multiprocessing.get_context("spawn")

    def run(self, jobs: list[dict], out_dir: str, on_done: OnDone) -> None:
        pending = list(jobs)
        idle: list = []
        busy: dict = {}  # connection -> (process, job, deadline, start)
        processes = []

        def start() -> tuple[Any, Any]:
            parent, child = self.context.Pipe()
            process = self.context.Process(target=_worker, args=(child,), daemon=True)
            process.start()
            child.close()
            processes.append(process)
            return parent, process

        stopping = False

        def done(record: dict) -> None:
            nonlocal stopping
            if not on_done(record):
                stopping = True

        try:
            for _ in range(min(self.size, len(pending))):
                idle.append(start())
            while (pending or busy) and not stopping:
                while pending and idle:
                    connection, process = idle.pop()
                    job = pending.pop(0)
                    connection.send((job, out_dir))
                    deadline = time.monotonic() + self.timeout if self.timeout else None
                    busy[connection] = (process, job, deadline, time.monotonic())
                waits = [d for _, _, d, _ in busy.values() if d is not None]
                left = max(0.0, min(waits) - time.monotonic()) if waits else None
                ready = wait(list(busy) + [p.sentinel for p, *_ in busy.values()], left)
                now = time.monotonic()
                for connection, (process, job, deadline, began) in list(busy.items()):
                    record = None
                    if connection in ready:
                        try:
                            record = connection.recv()
                        except (EOFError, OSError):
                            record = None
                        if record is not None:
                            del busy[connection]
                            idle.append((connection, process))
                            done(record)
                            continue
                    if process.sentinel in ready or not process.is_alive():
                        cause, error = "crashed", _death(process)
                    elif deadline is not None and now >= deadline:
                        cause, error = "timeout", f"still running after {self.timeout:g} s"
                    else:
                        continue
                    process.kill()
                    process.join()
                    del busy[connection]
                    done(dict(job, status="failed", cause=cause, error=error,
                              seconds=round(now - began, 2), rows=[]))
                    if pending:
                        idle.append(start())
        finally:  # also stops the jobs still running after --fail-fast
            for process in processes:
                if process.is_alive():
                    process.kill()
                process.join()


def _death(process: Any) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        hint = " (killed: out of memory?)" if code == -9 else ""
        return f"worker died from signal {-code}{hint}"
    return f"worker exited with code {code}"


class RayExecutor:
    """One Ray task per model on an existing cluster (or a local one), with CPU and memory
    requests; a task past the timeout is cancelled."""

    def __init__(self, address: str | None, timeout: float | None, cpus: float, memory_mb: int):
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'tfopt[ray]'") from None
        self.ray, self.timeout = ray, timeout
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        self.task = ray.remote(num_cpus=cpus, memory=memory_mb * 1024 * 1024,
                               max_retries=0)(convert)

    def run(self, jobs: list[dict], out_dir: str, on_done: OnDone) -> None:
        ray = self.ray
        started = {self.task.remote(job, out_dir): (job, time.monotonic()) for job in jobs}
        while started:
            ready, _ = ray.wait(list(started), num_returns=1, timeout=1.0)
            now = time.monotonic()
            for ref in ready:
                job, began = started.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as exc:  # the task's worker died
                    record = dict(job, status="failed", cause="crashed",
                                  error=first_line(exc), seconds=round(now - began, 2),
                                  rows=[])
                if not on_done(record):
                    for other in started:
                        ray.cancel(other, force=True)
                    return
            for ref, (job, began) in list(started.items()):
                if self.timeout and now - began > self.timeout:
                    ray.cancel(ref, force=True)
                    started.pop(ref)
                    if not on_done(dict(job, status="failed", cause="timeout",
                                        error=f"still running after {self.timeout:g} s",
                                        seconds=round(now - began, 2), rows=[])):
                        return
