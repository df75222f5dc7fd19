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

from tfopt.batch.state import record_state
from tfopt.errors import TfoptError, UsageError, first_line
from tfopt.limits import (
    SAMPLE_SECONDS,
    LimitReached,
    Watch,
    death,
    die_with_parent,
    kill_tree,
    prefer_fork_server,
)

OnDone = Callable[[dict], bool]  # takes a finished record; False stops the batch


def convert(job: dict, out_dir: str, bounded: bool = False) -> dict:
    """One model, in whatever process runs it: never raises, returns the model's record.
    bounded: the job's limits are enforced here (in a child process), not by the executor."""
    import tfopt

    start = time.perf_counter()
    record = {"name": job["name"], "src": job["src"], "key": job["key"], "pid": os.getpid()}
    limits = {} if bounded else {"timeout": None, "max_memory": None}
    try:
        result = tfopt.freeze(job["src"], Path(out_dir) / job["name"],
                              **dict(job["options"], overwrite=True, **limits))
    except LimitReached as exc:
        return dict(record, status="failed", cause=exc.cause, error=first_line(exc),
                    seconds=round(time.perf_counter() - start, 2), rows=[])
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


def convert_and_record(job: dict, out_dir: str, bounded: bool = False) -> dict:
    """convert, and its record written at once: the batch may be killed before it can."""
    record = convert(job, out_dir, bounded)
    record_state(Path(out_dir), record)
    return record


def bounded_task(job: dict, out_dir: str) -> dict:
    """A Ray task: the job under its own limits, in a child forked from a fork server that
    loads TensorFlow once per Ray worker."""
    from tfopt.logs import quiet_python

    quiet_python(False)
    prefer_fork_server()
    return convert_and_record(job, out_dir, bounded=True)


def _worker(connection: Any) -> None:
    """A local worker: imports TF once, then converts the jobs it is sent until None. It
    dies with the batch (a killed batch leaves no conversion running into a resumed one)."""
    from tfopt.logs import quiet_libraries

    die_with_parent()
    quiet_libraries(False)
    import tfopt.api  # noqa: F401  (the import cost is paid once per worker)

    while True:
        message = connection.recv()
        if message is None:
            return
        job, out_dir = message
        connection.send(convert_and_record(job, out_dir))


class LocalExecutor:
    """N worker processes; a job that crashes or passes its time or memory limit costs its
    worker, which is replaced, and becomes a failed record."""

    def __init__(self, workers: int):
        self.size = workers
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
                    busy[connection] = (process, job, Watch(job["options"].get("timeout"),
                                                            job["options"].get("max_memory")),
                                        time.monotonic())
                ready = wait(list(busy) + [p.sentinel for p, *_ in busy.values()],
                             SAMPLE_SECONDS)
                now = time.monotonic()
                for connection, (process, job, watch, began) in list(busy.items()):
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
                    breach = None
                    if process.sentinel in ready or not process.is_alive():
                        cause, error = "crashed", f"worker {death(process)}"
                    elif (breach := watch.breach(process.pid)) is not None:
                        cause = "timeout" if breach == "time" else "memory"
                        error = watch.message(breach, None)
                    else:
                        continue
                    kill_tree(process.pid)
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


class RayExecutor:
    """One Ray task per model on an existing cluster (or a local one), with CPU and memory
    requests; each task enforces its job's time and memory limits on a child process."""

    def __init__(self, address: str | None, cpus: float, memory_mb: int):
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'tfopt[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        self.task = ray.remote(num_cpus=cpus, memory=memory_mb * 1024 * 1024,
                               max_retries=0)(bounded_task)

    def run(self, jobs: list[dict], out_dir: str, on_done: OnDone) -> None:
        ray = self.ray
        started = {self.task.remote(job, out_dir): (job, time.monotonic()) for job in jobs}
        try:
            while started:
                ready, _ = ray.wait(list(started), num_returns=1, timeout=1.0)
                for ref in ready:
                    job, began = started.pop(ref)
                    try:
                        record = ray.get(ref)
                    except Exception as exc:  # the task's worker died
                        record = dict(job, status="failed", cause="crashed",
                                      error=first_line(exc),
                                      seconds=round(time.monotonic() - began, 2), rows=[])
                    if not on_done(record):
                        return
        finally:  # also stops the tasks still running after --fail-fast
            for ref in started:
                ray.cancel(ref, force=True)
