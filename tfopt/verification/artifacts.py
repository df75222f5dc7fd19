"""Building one artifact and checking it against the original: what a fixed-precision
export and every candidate of --quantize auto share."""
from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tfopt.errors import ConversionError, first_line
from tfopt.exporters import EXPORTERS, ExportOptions
from tfopt.files import companion, path_bytes, tree_digest
from tfopt.model import Model
from tfopt.reporting.output import write_failure
from tfopt.results import ArtifactReport
from tfopt.verification.checks import Check, batch_size, feed_shapes, widened
from tfopt.verification.divergence import message, traced

LARGE_ARTIFACT = 64 << 20  # bytes


def build_and_check(fmt: str, model: Model, path: Path, options: ExportOptions,
                    check: Check, explicit: bool = True) -> ArtifactReport:
    """Export one artifact to path and verify it; a failure is recorded, and path removed.
    explicit: the user named this target (a default one that cannot hold the model is
    skipped, not failed)."""
    exporter = EXPORTERS[fmt]
    start = time.perf_counter()
    try:
        exported = exporter.export(model, path, options)
    except Exception as exc:  # one target failing must not stop the others
        remove(path, exporter.COMPANIONS)
        if write_failure(exc):  # not the target's fault: the whole run cannot be written
            raise
        details = exc.details if isinstance(exc, ConversionError) else {}
        if details.get("too_large") and not explicit:  # pb with weights past 2 GB
            return ArtifactReport(format=fmt, status="skipped", error=str(exc),
                                  seconds=round(time.perf_counter() - start, 2))
        message = str(exc) if isinstance(exc, ConversionError) else \
            f"{fmt} export failed: {first_line(exc)}"
        return ArtifactReport(format=fmt, status="failed", error=message,
                              seconds=round(time.perf_counter() - start, 2),
                              attempts=details.get("attempts", []),
                              blocking_ops=details.get("blocking_ops", []))
    report = ArtifactReport(format=fmt, status="ok", path=str(path),
                            precision=exported.precision, fallback=exported.fallback,
                            attempts=exported.attempts, steps=exported.steps,
                            float_layers=list(options.float_layers),
                            recurrent=exported.recurrent, note=exported.note,
                            seconds=round(time.perf_counter() - start, 2))
    report.bytes = path_bytes(path, exporter.COMPANIONS)
    report.sha256 = tree_digest(path, exporter.COMPANIONS)
    report.ops = exporter.describe(path, model)
    report.nodes = sum(report.ops.values())
    large = report.bytes > LARGE_ARTIFACT  # collecting costs ~0.1 s; worth it past this
    start = time.perf_counter()
    try:
        if large:  # the exporter's TF objects hold cycles: free its copy of the weights
            gc.collect()
        run = widened(exporter.runner(path, model))
        actual = [run(feed) for feed in check.feeds]
        report.verify_seconds = round(time.perf_counter() - start, 2)
    except Exception as exc:  # the artifact's own runtime refused it: a failed target
        report.blocking_ops = sorted(op for op in report.ops if op.startswith("Flex"))
        if report.blocking_ops:  # the converter's Select TF ops fallback
            return _failed(report, path, (
                f"the TFLite artifact needs Select TF ops ({', '.join(report.blocking_ops)}), "
                "which the tf.lite.Interpreter from pip cannot run; run it with the Flex "
                "delegate (tensorflow-lite-select-tf-ops) or remove those ops"))
        return _failed(report, path, f"{fmt} runtime cannot run the artifact: {first_line(exc)}")
    report.batch = {"verified": sorted({batch_size(feed) for feed in check.feeds})}
    batched = None
    if check.batched is not None and exported.batch_limit is None:
        try:
            batched = run(check.batched)
        except Exception as exc:  # the runtime refused the batch: a failed target
            return _failed(report, path, f"{fmt} runtime cannot run the artifact at batch "
                                         f"{check.batch_size}: {first_line(exc)}")
        report.batch["verified"].append(check.batch_size)
    elif check.batched is not None:
        report.batch["limit"] = exported.batch_limit
    report.shapes = {"verified": [feed_shapes(check.feeds[0])]}
    reshaped = None
    if check.reshaped is not None and exported.shape_limit is not None:
        report.shapes["limit"] = exported.shape_limit
    elif check.reshaped is not None:
        try:
            reshaped = run(check.reshaped)
        except Exception as exc:  # the runtime refused another size: a failed target
            return _failed(report, path, f"{fmt} runtime cannot run the artifact at "
                                         f"{_shown(check.reshaped)}: {first_line(exc)}")
        report.shapes["verified"].append(feed_shapes(check.reshaped))
    del run
    if large:  # and the runtime's copy, before the next target loads its own
        gc.collect()
    report.parity = check.verdict(actual, report.precision, batched, reshaped)
    if not report.parity.passed:
        report.status = "differs"
    trace_if_asked(report, check, lambda: exporter.trace(path, check.feeds[0], model.signature))
    return report


def trace_if_asked(report: ArtifactReport, check: Check,
                   run_trace: Callable[[], dict]) -> None:
    """A failing artifact's first divergent op (any artifact's with --trace, and every
    quantized one's per-layer error), in the report and in the failure's reason."""
    quantized = report.precision != "fp32"
    if check.tracer is None or report.parity is None or \
            (report.parity.passed and not check.trace_all and not quantized):
        return
    start = time.perf_counter()
    budget = check.budgets.get(report.precision) if quantized else None
    report.divergence = traced(run_trace, check.tracer,
                               budget.min_cosine if budget is not None else None)
    report.divergence["seconds"] = round(time.perf_counter() - start, 2)
    clause = message(report.divergence)
    if clause and not report.parity.passed:
        report.parity.reason = f"{report.parity.reason}; {clause}"


def _shown(feed: dict) -> str:
    return ", ".join(f"{name} {'x'.join(map(str, shape))}"
                     for name, shape in feed_shapes(feed).items())


def _failed(report: ArtifactReport, path: Path, error: str) -> ArtifactReport:
    """A built artifact that its runtime refused: removed, and the report says why."""
    remove(path, EXPORTERS[report.format].COMPANIONS)
    report.status, report.error = "failed", error
    report.path, report.bytes, report.nodes, report.ops = None, None, None, {}
    return report


def remove(path: Path, companions: tuple[str, ...] = ()) -> None:
    """An artifact: a directory, or a file and its companions."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        for file in [path] + [companion(path, c) for c in companions]:
            file.unlink(missing_ok=True)


def move(source: Path, path: Path, companions: tuple[str, ...] = ()) -> None:
    """An artifact to another place, its companions with it (named after it again)."""
    pairs = [(source, path)] + [(companion(source, c), companion(path, c)) for c in companions]
    for old, new in pairs:
        if old.exists():
            shutil.move(str(old), str(new))
