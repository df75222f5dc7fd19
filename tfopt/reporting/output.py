"""The output directory: written in a staging directory beside it, published atomically.

- Checked before anything loads: OUT is a directory or absent (a dangling symlink is
  refused), it does not overlap the source, it is empty or `--overwrite` is given and it
  holds only what tfopt wrote, and a staging directory can be created beside it.
- Publishing swaps the staging directory and the old OUT in one `renameat2(RENAME_EXCHANGE)`
  (Linux): a kill at any instant leaves the old complete OUT or the new complete one. It
  runs under an flock on OUT's parent, so concurrent runs on one OUT publish one at a time.
- Staging directories carry their process id; a run removes those whose process is gone.
- A write that fails (disk full, file too large, read-only, permission, name too long)
  is an OutputError, exit 6: nothing is published and an existing OUT is untouched.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from tfopt.errors import EXIT_OUTPUT, TfoptError, UsageError

WRITE_ERRNOS = frozenset({errno.EFBIG, errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM,
                          errno.ENAMETOOLONG, errno.EDQUOT})
# what TensorFlow's C++ file system says for the same failures (it raises OpErrors)
_WRITE_MESSAGES = re.compile(r"No space left on device|File too large|Read-only file system|"
                             r"Permission denied|File name too long|Disk quota exceeded")
_STAGING = re.compile(r"^\..*\.tfopt-(\d+)-[0-9a-f]{8}$")
REPORT = "report.json"
RENAME_EXCHANGE = 2
AT_FDCWD = -100


class OutputError(TfoptError):
    """The output could not be written; nothing was published."""

    exit_code = EXIT_OUTPUT


def write_failure(exc: BaseException) -> str | None:
    """Why a write failed, if exc (or what caused it) is a write failure; else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in WRITE_ERRNOS:
            return os.strerror(current.errno)
        found = _WRITE_MESSAGES.search(str(current))
        if found and not isinstance(current, TfoptError):
            return found.group(0)
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def writes_to(out: Path) -> Iterator[None]:
    """Turn a write failure inside the block into an OutputError naming OUT."""
    try:
        yield
    except TfoptError:
        raise
    except Exception as exc:
        reason = write_failure(exc)
        if reason is None:
            raise
        raise OutputError(f"cannot write the output for {out}: {reason}; free space, raise "
                          "the file-size limit or choose a writable -o; nothing was "
                          "published") from exc


def check_output(src: Path, out: Path, overwrite: bool) -> Path:
    """Refuse an output that cannot or must not be written; returns OUT with a symlink to a
    directory resolved (publishing replaces the directory, never the link)."""
    try:
        return _check_output(src, out, overwrite)
    except OSError as exc:  # a name too long for the file system, a directory we cannot list
        raise OutputError(f"cannot use -o {str(out)[:80]}: {exc.strerror}; choose a shorter "
                          "or accessible path") from exc


def _check_output(src: Path, out: Path, overwrite: bool) -> Path:
    if out.is_symlink():
        if not out.exists():
            raise UsageError(f"-o {out} is a symlink to {os.readlink(out)}, which does not "
                             "exist; pass a real directory")
        out = out.resolve()
    resolved_src = Path(os.path.realpath(src))  # never raises, even on a symlink loop
    resolved_out = Path(os.path.realpath(out))
    if resolved_out == resolved_src or resolved_src in resolved_out.parents \
            or resolved_out in resolved_src.parents:
        raise UsageError(f"output {out} overlaps the source {src}; choose an -o outside it")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} is a file; choose a directory with -o")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if entries and not overwrite:
            raise UsageError(f"output directory {out} is not empty; pass --overwrite or "
                             "choose another -o")
        if entries and not written_by_tfopt(out):
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise UsageError(f"--overwrite replaces only what tfopt wrote, and {out} holds "
                             f"other files ({shown}) and no tfopt report.json; choose "
                             "another -o or remove them")
    return out


def written_by_tfopt(out: Path) -> bool:
    try:
        report = json.loads((out / REPORT).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "tfopt_version" in report


def remove_stale_staging(parent: Path) -> list[str]:
    """Remove the staging directories in parent whose process is gone; returns their names."""
    removed: list[str] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        found = _STAGING.match(entry.name)
        if found and entry.is_dir() and not _alive(int(found.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_staging(out: Path) -> Path:
    """A private staging directory beside OUT (same file system, so publishing is a rename)."""
    parent = out.parent
    with writes_to(out):
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(parent)
        name = f".{out.name[:100]}.tfopt-{os.getpid()}-{secrets.token_hex(4)}"
        staging = parent / name
        staging.mkdir(mode=0o700)
    return staging


def publish(staging: Path, out: Path, overwrite: bool) -> None:
    """Move the finished staging directory to OUT atomically, one run at a time."""
    umask = os.umask(0)
    os.umask(umask)
    with writes_to(out), _locked(out.parent):
        staging.chmod(0o777 & ~umask)  # mkdir made it private
        if out.is_dir() and any(out.iterdir()):
            if not overwrite or not written_by_tfopt(out):
                raise UsageError(f"{out} was written while this run converted (another "
                                 "tfopt run?); pass --overwrite or choose another -o")
            _exchange(staging, out)
            shutil.rmtree(staging, ignore_errors=True)  # now the old OUT
        else:
            if out.is_dir():
                out.rmdir()
            os.rename(staging, out)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on a directory; released when the block ends (or the process)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories in one system call; where renameat2 is missing, fall back to two
    renames (a kill between them leaves OUT missing, its old content at `a`)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(code, os.strerror(code), str(b))
    old = a.with_name(a.name + "-old")
    os.rename(b, old)
    os.rename(a, b)
    os.rename(old, a)
