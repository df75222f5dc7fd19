"""What a run is doing while it does it: load, passes, verification inputs and the
original's reference run, then each target's export and verification.

On a terminal a rich status line shows the running stage and its elapsed time, and each
finished stage stays as one line; elsewhere (CI, a pipe) one plain line per finished stage.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import IO, Any


class Progress:
    """No output: what the API and `-q`/`--json` get."""

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield


class LineProgress(Progress):
    """One line per finished stage."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.stream.write(f"tfopt: {name} done in {time.perf_counter() - start:.1f} s\n")
        self.stream.flush()


class LiveProgress(Progress):
    """A rich status line with the running stage; finished stages stay above it."""

    def __init__(self, stream: IO[str] | None = None):
        from rich.console import Console

        self.console: Any = Console(file=stream or sys.stderr)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        with self.console.status(f"[bold]{name}[/bold] ...", spinner="dots"):
            yield
        self.console.print(f"[green]\u2713[/green] {name} "
                           f"[dim]{time.perf_counter() - start:.1f} s[/dim]", highlight=False)


def for_terminal(quiet: bool) -> Progress:
    """The progress a command shows: none when quiet, live on a terminal, lines elsewhere."""
    if quiet:
        return Progress()
    return LiveProgress() if sys.stderr.isatty() else LineProgress()
