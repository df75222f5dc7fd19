"""Each target of a run: the model prepared by its exporter's own passes, exported at the
asked precision (or the best one `--quantize auto` finds), and verified."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tfopt.exporters import EXPORTERS, ExportOptions
from tfopt.exporters import prepare as prepare_for
from tfopt.model import Model, Spilled
from tfopt.results import WRITTEN, ArtifactReport, PassReport
from tfopt.verification.artifacts import build_and_check
from tfopt.verification.checks import Check
from tfopt.verification.quantize import choose_precision


def export_target(fmt: str, optimized: Model | Spilled, staging: Path, out: Path,
                  options: ExportOptions, check: Check, objective: str, explicit: bool
                  ) -> tuple[ArtifactReport, list[PassReport]]:
    """The artifact of one target in staging, its report (path as published in out), and
    the reports of the exporter's preparation passes. The graph read back from a Spilled
    one is held by the prepared model alone, which an exporter may page out (TFLite)."""
    prepared, reports = prepare_for(fmt, optimized.load())
    report = _export(fmt, prepared, staging, options, check, objective, explicit)
    # a preparation pass that changes how the artifact computes says so
    report.note = "; ".join(filter(None, [report.note] + [
        c.get("note") for r in reports for c in r.changes])) or None
    if report.status in WRITTEN:
        report.path = str(out / EXPORTERS[fmt].FILENAME)
    return report, reports


def _export(fmt: str, model: Model, staging: Path, options: ExportOptions, check: Check,
            objective: str, explicit: bool) -> ArtifactReport:
    exporter = EXPORTERS[fmt]
    path = staging / exporter.FILENAME
    if options.quantize == "auto" and {"none"} != exporter.MODES:
        return choose_precision(fmt, model, path, options, check, objective)
    note = None
    if options.quantize not in exporter.MODES:
        takers = [name for name, e in EXPORTERS.items() if options.quantize in e.MODES]
        note = f"stays fp32: --quantize {options.quantize} applies to {', '.join(takers)}"
        options = replace(options, quantize="none")
    report = build_and_check(fmt, model, path, options, check, explicit)
    report.note = "; ".join(filter(None, [note, report.note])) or None
    return report
