"""Sizes and content digests of files and directory trees."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def sidecar(path: Path) -> Path:
    """Where a file artifact keeps its external data (ONNX weights past the threshold)."""
    return path.with_name(path.name + ".data")


def tree_files(path: Path) -> list[Path]:
    """Every file under a directory, sorted; a file is its own list, with its sidecar."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] + ([sidecar(path)] if sidecar(path).is_file() else [])


def path_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a directory (0 if it does not exist)."""
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in tree_files(path))


def digest_files(files: Iterable[Path], root: Path | None, digest=None):
    """Add each file's name (relative to root, else its own name) and bytes to a sha256."""
    digest = digest or hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root) if root is not None else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest


def tree_digest(path: Path) -> str:
    """sha256 of every file's name and bytes under path (or of one file)."""
    path = Path(path)
    return digest_files(tree_files(path), path if path.is_dir() else None).hexdigest()
