"""Sizes and content digests of files and directory trees."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def companion(path: Path, pattern: str) -> Path:
    """A file written beside a file artifact, named by a pattern of its name and stem:
    "{name}.data" for model.onnx is model.onnx.data, "{stem}.bin" for model.xml model.bin."""
    return path.with_name(pattern.format(name=path.name, stem=path.stem))


def tree_files(path: Path, companions: Iterable[str] = ()) -> list[Path]:
    """Every file under a directory, sorted; a file is its own list, with the companions
    (patterns, see companion) that exist."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] + [f for f in (companion(path, c) for c in companions) if f.is_file()]


def path_bytes(path: Path, companions: Iterable[str] = ()) -> int:
    """Bytes of a file and its companions, or of every file under a directory (0 if it does
    not exist)."""
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in tree_files(path, companions))


def digest_files(files: Iterable[Path], root: Path | None, digest=None):
    """Add each file's name (relative to root, else its own name) and bytes to a sha256."""
    digest = digest or hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root) if root is not None else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest


def tree_digest(path: Path, companions: Iterable[str] = ()) -> str:
    """sha256 of every file's name and bytes under path (or of one file and its
    companions)."""
    path = Path(path)
    return digest_files(tree_files(path, companions), path if path.is_dir() else None
                        ).hexdigest()
