"""A run's report.json and report.html, with the versions of the libraries that shaped it."""
from __future__ import annotations

import json
from pathlib import Path

from tfopt.exporters import EXPORTERS
from tfopt.reporting.pages import write_report
from tfopt.results import FreezeResult

VERSIONED = ("tensorflow", "keras", "protobuf", "numpy")  # then each target's PACKAGES
# the same library under another distribution's name (release candidates of TF 2.22 bring
# keras-nightly; CPU-only images carry tensorflow-cpu)
ALSO_DISTRIBUTED_AS = {"tensorflow": ("tensorflow-cpu", "tf-nightly"), "keras": ("keras-nightly",)}


def library_versions() -> dict[str, str | None]:
    """The versions of the libraries that shape an artifact, as installed."""
    from importlib import metadata

    found: dict[str, str | None] = {}
    targets = (package for exporter in EXPORTERS.values() for package in exporter.PACKAGES)
    for package in dict.fromkeys(VERSIONED + tuple(targets)):
        found[package] = None
        for name in (package, *ALSO_DISTRIBUTED_AS.get(package, ())):
            try:
                found[package] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def write_result(result: FreezeResult, staging: Path) -> None:
    """report.json and report.html into the staging directory."""
    written = result.to_json()
    (staging / "report.json").write_text(written)
    write_report(staging, json.loads(written))
