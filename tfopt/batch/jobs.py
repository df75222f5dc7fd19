"""What a batch converts: jobs from directories, globs and manifests, each with its
FreezeOptions and a content key that says whether it is up to date."""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tfopt.errors import UsageError, first_line
from tfopt.files import digest_files, tree_files
from tfopt.options import FreezeOptions, parse_options

MANIFEST_SUFFIXES = (".jsonl", ".csv", ".toml")
MODEL_SUFFIXES = (".keras", ".h5", ".pb", ".pbtxt", ".meta")
RESERVED = ("summary.json", "summary.csv", "summary.md")  # and every name starting with "."


@dataclass
class Job:
    name: str
    src: str
    options: dict[str, Any] = field(default_factory=dict)  # FreezeOptions fields that differ
    key: str = ""  # source content + options + tfopt version: equal means up to date


def discover(sources: list[str], defaults: FreezeOptions) -> list[Job]:
    """The jobs named by directories, globs and manifests; a manifest row's options override
    the batch-wide defaults."""
    jobs: list[Job] = []
    for source in sources:
        path = Path(source)
        if path.is_file() and path.suffix in MANIFEST_SUFFIXES:
            jobs += [_job(row, defaults, f"{path} row {i + 1}", path.parent)
                     for i, row in enumerate(read_manifest(path))]
        elif path.is_dir() and not _is_model(path):
            jobs += [_job({"src": str(child)}, defaults, str(child), None)
                     for child in sorted(path.iterdir()) if _is_model(child)]
        else:
            matches = sorted(glob.glob(source)) if any(c in source for c in "*?[") else \
                [source]
            if not matches or not all(Path(m).exists() for m in matches):
                raise UsageError(f"batch source {source} matches no model; pass a directory "
                                 "of models, a glob, or a .jsonl/.csv/.toml manifest")
            jobs += [_job({"src": m}, defaults, m, None) for m in matches]
    names = [j.name for j in jobs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"two models would write OUT/{duplicates[0]}; give them distinct "
                         "names with a manifest 'name' column")
    if not jobs:
        raise UsageError(f"no models found in {', '.join(sources)}")
    return jobs


def _is_model(path: Path) -> bool:
    return (path.is_dir() and any((path / f).is_file() for f in
                                  ("saved_model.pb", "saved_model.pbtxt"))) \
        or (path.is_file() and path.suffix in MODEL_SUFFIXES)


def read_manifest(path: Path) -> list[dict]:
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.suffix == ".csv":
            return [{k: v for k, v in row.items() if v not in (None, "")}
                    for row in csv.DictReader(io.StringIO(path.read_text()))]
        import tomllib

        data = tomllib.loads(path.read_text())
        return list(data.get("model", data.get("models", [])))
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot read manifest {path}: {first_line(exc)}") from exc


def _job(row: dict, defaults: FreezeOptions, where: str, base: Path | None) -> Job:
    row = dict(row)
    if "src" not in row:
        raise UsageError(f"{where} has no 'src'")
    src = Path(row.pop("src"))
    if base is not None and not src.is_absolute():
        src = base / src
    name = row.pop("name", None)
    if name is None:
        name = src.name.removesuffix(".meta").split(".")[0]
    check_name(name, where)
    try:
        options = replace(defaults, **parse_options(row, where)).validate()
    except (UsageError, TypeError, ValueError) as exc:  # TypeError: a mistyped value
        message = first_line(exc)
        raise UsageError(message if message.startswith(where) else f"{where}: {message}") \
            from None
    return Job(name, str(src), options_dict(options))


def check_name(name: object, where: str) -> None:
    """A model's name becomes OUT/<name>: one plain path component, nothing tfopt writes
    itself, so that every file a batch writes stays under OUT."""
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"{where}: 'name' must be a non-empty string, not {name!r}")
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name \
            or os.sep in name or (os.altsep and os.altsep in name):
        raise UsageError(f"{where}: name {name!r} is not a single file name; give a name "
                         "without path separators, '.' or '..'")
    if name.startswith(".") or name in RESERVED:
        raise UsageError(f"{where}: name {name!r} is reserved for tfopt's own files in OUT; "
                         "choose another")
    if len(name.encode()) > 200:
        raise UsageError(f"{where}: name {name[:40]!r}... is longer than 200 bytes")


def options_dict(options: FreezeOptions) -> dict[str, Any]:
    """The fields that differ from FreezeOptions' defaults, JSON-ready: what a worker needs
    and what the content key hashes."""
    base = asdict(FreezeOptions())
    return {k: v for k, v in asdict(options).items() if v != base[k]}


# they bound a run, not its artifacts
LIMIT_FIELDS = ("timeout", "max_memory", "max_nodes", "max_call_depth")


def content_key(job: Job) -> str:
    """sha256 of the source's files (names and bytes), the options and the tfopt version."""
    from tfopt.version import __version__

    digest = hashlib.sha256(__version__.encode())
    shaping = {k: v for k, v in job.options.items() if k not in LIMIT_FIELDS}  # not outputs
    digest.update(json.dumps(shaping, sort_keys=True, default=str).encode())
    src = Path(job.src)
    if src.suffix == ".meta":  # a checkpoint: the .meta and its .index/.data files
        files = sorted(Path(p) for p in glob.glob(glob.escape(str(src).removesuffix(".meta"))
                                                  + "*"))
        return digest_files(files, None, digest).hexdigest()
    return digest_files(tree_files(src), src if src.is_dir() else None, digest).hexdigest()
