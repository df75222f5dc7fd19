"""Bounded runs: a conversion under a time and a memory limit, in a worker process that a
light supervisor can stop whatever the worker is doing.

A model is a program: a `tf.while_loop` that never ends or a tensor sized from the input
runs inside TF's C++ kernels, where no Python signal or exception reaches it, and memory
grows faster than any in-process check can react. So the run goes to a worker process; the
supervisor (the caller's process) samples the worker's process tree every 50 ms from /proc
and kills the tree at the deadline or at the memory limit, before the kernel's OOM killer
would, names the stage that was running, and publishes nothing. The worker is forked from
the caller when TensorFlow is not loaded there (the command line: no second import), and
otherwise from a fork server that imported tfopt and TensorFlow once, never ran TF.
"""
from __future__ import annotations

import builtins
import contextlib
import ctypes
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tfopt.errors import EXIT_LIMIT, TfoptError
from tfopt.reporting.progress import Progress

DEFAULT_TIMEOUT = 3600.0  # seconds: the command line's limit per run (and per batch model)
MEMORY_SHARE = 0.9  # the command line's default --max-memory: this share of what is available
SAMPLE_SECONDS = 0.05
MAX_NODES = 200_000  # a 100k-node graph takes minutes; time grows faster than the nodes
MAX_CALL_DEPTH = 100  # inlined names grow with the depth: 1,000 levels take a minute
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


LIMIT_CAUSES = {"time": "timeout", "memory": "memory"}  # Watch.breach -> failure cause


class LimitReached(TfoptError):
    """The run passed --timeout or --max-memory and was stopped; nothing was published."""

    exit_code = EXIT_LIMIT

    def __init__(self, message: str, cause: str = "timeout"):
        super().__init__(message)
        self.cause = cause  # "timeout" or "memory", as a batch's failure causes


def parse_size(text: str) -> int:
    """'2G', '1500M', '2GiB', '2gb', '1073741824' -> bytes (units are powers of 1024)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not found:
        raise ValueError(f"'{text}' is not a size such as 2G, 1500M or 1073741824")
    return int(float(found.group(1)) * _UNITS[found.group(2)])


def format_size(count: float) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def available_memory() -> int | None:
    """Bytes this process can still take: the kernel's MemAvailable, or less where a cgroup
    (v2 or v1) caps the process's group; None where /proc is missing."""
    found = []
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as handle:
            line = next(line for line in handle if line.startswith("MemAvailable:"))
        found.append(int(line.split()[1]) * 1024)
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory.limit_in_bytes", "memory.usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):
            group = _cgroup_dir(limit_file)
            if group is not None:
                limit = (group / limit_file).read_text().strip()
                if limit != "max" and int(limit) < 2**60:
                    found.append(int(limit) - int((group / usage_file).read_text()))
    return min(found) if found else None


def _cgroup_dir(limit_file: str) -> Path | None:
    """The directory of this process's memory cgroup that holds limit_file, if mounted."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for root in (("/sys/fs/cgroup",) if controllers == "" else
                     (("/sys/fs/cgroup/memory",) if "memory" in controllers.split(",") else ())):
            candidate = Path(root + path)
            if (candidate / limit_file).is_file():
                return candidate
    return None


def default_max_memory(workers: int = 1) -> int | None:
    """The command line's --max-memory: MEMORY_SHARE of what is available now, shared by the
    runs that go at once."""
    available = available_memory()
    return None if available is None else int(available * MEMORY_SHARE / max(1, workers))


def command_line_defaults(workers: int = 1) -> dict[str, Any]:
    """The limits a command-line run gets when its flags do not say."""
    return {"timeout": DEFAULT_TIMEOUT, "max_memory": default_max_memory(workers) or 0}


def process_tree(pid: int) -> list[int]:
    """A process and its descendants, from /proc's children lists (gone ones skipped)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current in pids:
            continue
        pids.append(current)
        with contextlib.suppress(OSError, ValueError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    todo.extend(int(child) for child in handle.read().split())
    return pids


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 once it is gone)."""
    total = 0
    for current in process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError), \
                open(f"/proc/{current}/statm") as handle:
            total += int(handle.read().split()[1]) * _PAGE
    return total


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants."""
    for current in process_tree(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(current, signal.SIGKILL)


class Watch:
    """One worker's deadline and memory limit, checked by whoever supervises it."""

    def __init__(self, timeout: float | None, max_memory: int | None):
        self.timeout = timeout or None
        self.max_memory = max_memory or None
        self.start = time.monotonic()
        self.peak = 0

    def breach(self, pid: int) -> str | None:
        """What the worker has passed, if anything: 'time' or 'memory'."""
        if self.max_memory is not None:
            now = tree_rss(pid)
            self.peak = max(self.peak, now)
            if now > self.max_memory:
                return "memory"
        if self.timeout is not None and time.monotonic() - self.start > self.timeout:
            return "time"
        return None

    def message(self, which: str, stage: str | None) -> str:
        where = f" during '{stage}'" if stage else ""
        if which == "time":
            return (f"stopped at the time limit: still running after {self.timeout:g} s "
                    f"(--timeout {self.timeout:g}){where}; nothing was published. A loop "
                    "that never ends on the verification inputs looks like this: check "
                    "--data, or raise --timeout (0: no limit) for a model that is just slow")
        return (f"stopped at the memory limit: the run reached {format_size(self.peak)} "
                f"(--max-memory {format_size(self.max_memory or 0)}){where}; nothing was "
                "published. A tensor sized from the input looks like this: check "
                "--input-shape/--data, or raise --max-memory (0: no limit)")


class RelayProgress(Progress):
    """In the worker: each stage's start and end go to the supervisor."""

    def __init__(self, connection: Any):
        self.connection = connection

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.connection.send(("stage", name))
        yield  # a stage that raises is closed as failed by the supervisor
        self.connection.send(("done", name))


def _relay_warning(connection: Any) -> Callable[..., None]:
    def show(message, category, *_, **__) -> None:
        connection.send(("warning", str(message), category.__name__))
    return show


def _worker(connection: Any, setup: Callable[[], None] | None, call: Callable[..., Any],
            args: tuple) -> None:
    """The worker's body: run call(*args, progress), send back its result or its error."""
    die_with_parent()
    if setup is not None:
        setup()
    warnings.showwarning = _relay_warning(connection)
    try:
        connection.send(("result", call(*args, RelayProgress(connection))))
    except TfoptError as exc:
        connection.send(("error", exc))
    except BaseException as exc:  # a bug: its type, message and traceback for --debug
        connection.send(("bug", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    connection.close()


def die_with_parent() -> None:
    """Linux: the kernel kills this worker when its parent (the supervisor, a batch, or the
    fork server that dies with them) goes, so a killed tfopt leaves no run behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PR_SET_PDEATHSIG = 1


class WorkerBug(Exception):
    """An unexpected exception in the worker; `worker_traceback` is its traceback."""

    def __init__(self, message: str, worker_traceback: str):
        super().__init__(message)
        self.worker_traceback = worker_traceback


_context_lock = threading.Lock()


_fork_server_wanted = False


def prefer_fork_server() -> None:
    """This process will run many bounded jobs: import TensorFlow once, in a fork server."""
    global _fork_server_wanted
    _fork_server_wanted = True


def _context() -> Any:
    """fork where this process has not loaded TensorFlow (nothing to inherit badly) and runs
    one job; otherwise a fork server that preloaded tfopt's pipeline and TensorFlow once."""
    if "tensorflow" not in sys.modules and not _fork_server_wanted and \
            sys.platform == "linux":
        return multiprocessing.get_context("fork")
    with _context_lock:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["tfopt.api", "tensorflow"])
    return context


def run_bounded(call: Callable[..., Any], args: tuple, timeout: float | None,
                max_memory: int | None, progress: Progress,
                setup: Callable[[], None] | None = None) -> Any:
    """call(*args, progress) in a worker process under the limits; its result, or its
    TfoptError raised here; LimitReached when it passed a limit (the worker is killed)."""
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    worker = context.Process(target=_worker, args=(sender, setup, call, args),
                             name="tfopt-run")
    watch = Watch(timeout, max_memory)
    worker.start()
    sender.close()
    stages: list[tuple[str, Any]] = []  # the running stages, outermost first
    try:
        while True:
            if receiver.poll(SAMPLE_SECONDS):
                try:
                    message = receiver.recv()
                except (EOFError, OSError):
                    message = None
                if message is None:
                    worker.join(5)
                    raise WorkerBug(f"the worker process {death(worker)}", "")
                kind, *rest = message
                if kind == "stage":
                    shown = progress.stage(rest[0])
                    shown.__enter__()
                    stages.append((rest[0], shown))
                elif kind == "done" and stages:
                    stages.pop()[1].__exit__(None, None, None)
                elif kind == "warning":  # a built-in category as it was; others as UserWarning
                    category = getattr(builtins, rest[1], None)
                    warnings.warn(rest[0], category if isinstance(category, type) and
                                  issubclass(category, Warning) else UserWarning, stacklevel=2)
                elif kind == "result":
                    return rest[0]
                elif kind == "error":
                    raise rest[0]
                elif kind == "bug":
                    raise WorkerBug(rest[0], rest[1])
                continue
            which = watch.breach(worker.pid) if worker.pid else None
            if which is None and not worker.is_alive() and not receiver.poll(0):
                raise WorkerBug(f"the worker process {death(worker)}", "")
            if which is not None:
                kill_tree(worker.pid)
                raise LimitReached(watch.message(which, stages[-1][0] if stages else None),
                                   LIMIT_CAUSES[which])
    finally:
        for _, shown in reversed(stages):
            with contextlib.suppress(Exception):
                shown.__exit__(LimitReached, LimitReached("stopped"), None)
        if worker.is_alive():
            kill_tree(worker.pid)
        worker.join()
        receiver.close()


def death(process: Any) -> str:
    """How a worker process ended, for a message: 'died from signal 9 (out of memory?)'."""
    code = process.exitcode
    if code is not None and code < 0:
        hint = " (killed: out of memory?)" if code == -signal.SIGKILL else ""
        return f"died from signal {-code}{hint}"
    return f"exited with code {code}"
