"""What a batch reports: summary.json/.csv/.md with one row per model x target, failures
grouped by cause and library versions, and the live progress display."""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from tfopt.reporting.pages import write_summary_page
from tfopt.reporting.write import library_versions

SUMMARY_COLUMNS = ("model", "target", "status", "cause", "error", "bytes", "nodes", "parity",
                   "max_abs_err", "precision", "seconds", "skipped")
def summary_rows(records: list[dict]) -> list[dict]:
    rows = []
    for record in records:
        base = {"model": record["name"], "cause": record.get("cause"),
                "skipped": bool(record.get("skipped"))}
        if not record.get("rows"):
            rows.append(dict(base, target="-", status=record["status"], error=record["error"],
                             seconds=record.get("seconds")))
        for row in record.get("rows", []):
            rows.append(dict(base, **row, cause=None if row["status"] == "ok" and
                             row.get("parity") is not False else record.get("cause")))
    return [{c: r.get(c) for c in SUMMARY_COLUMNS} for r in rows]


def write_summary(out: Path, records: list[dict], failed: list[dict], skipped: list[str],
                  seconds: float) -> None:
    rows = summary_rows(records)
    groups: dict[str, list[str]] = {}
    for record in failed:
        groups.setdefault(record.get("cause") or "failed", []).append(record["name"])
    data: dict[str, Any] = {
        "models": len(records), "converted": len(records) - len(failed) - len(skipped),
        "skipped": skipped, "failed": len(failed), "failures_by_cause": groups,
        "seconds": seconds, "versions": library_versions(), "rows": rows}
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str))
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# tfopt batch: {data['models']} models, {data['failed']} failed, "
             f"{len(skipped)} up to date", "",
             "| " + " | ".join(SUMMARY_COLUMNS) + " |",
             "|" + " --- |" * len(SUMMARY_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join("" if row[c] is None else str(row[c]).replace("|", "/")
                                        for c in SUMMARY_COLUMNS) + " |")
    if groups:
        lines += ["", "## Failures by cause", ""]
        lines += [f"- {cause}: {', '.join(names)}" for cause, names in groups.items()]
    lines += ["", "versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items())]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    write_summary_page(out, json.loads(json.dumps(data, default=str)))


class BatchProgress:
    """A rich progress bar (count, elapsed, ETA, latest failures) on a terminal; plain log
    lines elsewhere (CI)."""

    def __init__(self, total: int, done: int = 0, stream: IO[str] | None = None):
        self.total, self.done = total, done
        self.failed: list[str] = []
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.bar: Any = None
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("tfopt batch"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TimeRemainingColumn(),
                           TextColumn("{task.fields[failed]}"),
                           console=Console(file=self.stream), transient=False)
            self.task = self.bar.add_task("batch", total=total, completed=done, failed="")
            self.bar.start()

    def update(self, record: dict) -> None:
        self.done += 1
        if record["status"] != "ok":
            self.failed.append(record["name"])
        if self.bar is not None:
            failed = f"failed: {', '.join(self.failed[-3:])}" if self.failed else ""
            self.bar.update(self.task, completed=self.done, failed=failed)
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / max(self.done, 1) * (self.total - self.done)
        state = "ok" if record["status"] == "ok" else f"FAILED ({record.get('cause')})"
        self.stream.write(f"tfopt batch: [{self.done}/{self.total}] {record['name']} {state}"
                          f" in {record.get('seconds')} s; elapsed {elapsed:.0f} s, "
                          f"ETA {eta:.0f} s\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
