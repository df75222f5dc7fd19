"""The pipeline behind every entry point, as named stages: load, read the user's data,
optimize, run the original (verification's reference), export and verify each target, write
the report; then publish OUT whole."""
from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from tfopt import compat
from tfopt.categories import CATEGORIES
from tfopt.errors import UsageError
from tfopt.files import path_bytes
from tfopt.graph import constant_bytes, op_histogram
from tfopt.limits import run_bounded
from tfopt.loaders import Loaded, check_exists, detect_format, load
from tfopt.loaders.base import check_graph_size
from tfopt.memory import map_large_blocks, return_freed_memory
from tfopt.model import Model, Spilled
from tfopt.options import DEFAULT_TARGETS, FreezeOptions
from tfopt.passes import run_pipeline
from tfopt.reporting.output import check_output, make_staging, publish, writes_to
from tfopt.reporting.progress import Progress
from tfopt.reporting.resources import Stages
from tfopt.reporting.write import library_versions, write_result
from tfopt.results import ArtifactReport, FreezeResult, GraphSummary, PassReport
from tfopt.security import IoOp, io_ops, refuse_io_ops, security_report
from tfopt.verification.checks import Check, widened
from tfopt.verification.pairing import artifact_format, check_artifact
from tfopt.verification.reference import read_data, reference_check
from tfopt.verification.targets import export_target
from tfopt.version import __version__


def freeze(src: str | os.PathLike, out_dir: str | os.PathLike | None = None,
           options: FreezeOptions | None = None, *, progress: Progress | None = None,
           setup: Callable[[], None] | None = None, **overrides: Any) -> FreezeResult:
    """Freeze a TensorFlow model into verified deployment artifacts.

    Args:
        src: a TF2 or TF1 SavedModel directory, a Keras `.keras`/`.h5` file, a TF1
            checkpoint (its `.meta` file or prefix) or a GraphDef `.pb`/`.pbtxt`. It is never
            modified.
        out_dir: where to write; defaults to `tfopt_out/<source name>`. It must not exist or
            be empty unless `overwrite`. It appears only once everything is written.
        options: a FreezeOptions (tfopt/options.py documents every field).
        overrides: FreezeOptions fields as keywords, e.g. `targets=["onnx"]`,
            `quantize="int8", calibration="cal.npz"`; they override `options`.
        progress: where to show the stages as they run (tfopt.reporting.progress); none by default.
        setup: with a limit (`timeout`, `max_memory`), called first in the worker process
            that runs the conversion (the command line quiets the libraries there).

    Returns:
        A FreezeResult. A target that failed to convert or verify is recorded there, not
        raised; `result.exit_code` is 3 then, or 4 if only parity failed.

    Raises:
        UsageError, InputError: bad arguments or an unreadable source (exit code 2).
        LimitReached: the run passed `timeout` or `max_memory` (exit code 7). With either
            set, the conversion runs in a worker process that is killed at the limit;
            without (the default), in this process, unbounded.
        TypeError: a keyword that is not a FreezeOptions field.
    """
    opts = _options("freeze", options, overrides)
    src = Path(src)
    out = Path(out_dir) if out_dir is not None else Path("tfopt_out") / (src.stem or "model")
    return _published(_run, src, out, (), opts, progress, setup)


def compare(src: str | os.PathLike, artifacts: list[str | os.PathLike],
            out_dir: str | os.PathLike | None = None, options: FreezeOptions | None = None,
            *, progress: Progress | None = None, setup: Callable[[], None] | None = None,
            **overrides: Any) -> FreezeResult:
    """Verify existing artifacts (tfopt's or any tool's) against their source model, on the
    inputs and with the rules of a conversion (`tfopt compare`).

    Args:
        src: the source model, as `freeze` takes it.
        artifacts: `.onnx` files (external data beside them), `.tflite` files, frozen `.pb`
            files, SavedModel directories.
        out_dir: where report.json and report.html go (default `tfopt_compare/<name>`),
            published as `freeze` publishes.
        options, progress, setup, overrides: as for `freeze` (the verification, source and
            limit fields apply).

    Returns:
        A FreezeResult whose artifacts are the given ones, in order: `exit_code` 0 when all
        match, 4 when one differs (status "differs"), 3 when one cannot run.

    Raises:
        InputError: an artifact that does not exist, has no known format, or whose inputs
            or outputs cannot be paired with the model's (by name, position, or a
            channels-first layout); and what `freeze` raises for the source.
    """
    opts = _options("compare", options, overrides)
    src = Path(src)
    if not artifacts:
        raise UsageError("tfopt compare needs at least one artifact to compare")
    given = [(artifact_format(Path(a)), Path(a).resolve()) for a in artifacts]
    out = Path(out_dir) if out_dir is not None else \
        Path("tfopt_compare") / (src.stem or "model")
    return _published(_compare, src, out, (given,), opts, progress, setup)


def _options(caller: str, options: FreezeOptions | None, overrides: dict) -> FreezeOptions:
    unknown = sorted(set(overrides) - {f.name for f in fields(FreezeOptions)})
    if unknown:
        raise TypeError(f"{caller}() got unknown option(s) {unknown}; see FreezeOptions")
    return replace(options or FreezeOptions(), **overrides).validate()


def _published(run: Callable[..., FreezeResult], src: Path, out: Path, extra: tuple,
               opts: FreezeOptions, progress: Progress | None,
               setup: Callable[[], None] | None) -> FreezeResult:
    """run(src, *extra, out, staging, opts, start, progress) into a staging directory, under
    the limits if any, then published as OUT; nothing is left behind if it raises."""
    start = time.perf_counter()
    # a missing or unreadable source costs no staging directory; a supervisor reads no
    # model file (TensorFlow's protos would load TensorFlow there): its worker does
    check_exists(src) if opts.bounded else detect_format(src)
    out = check_output(src, out, opts.overwrite)
    staging = make_staging(out)
    try:
        args = (src, *extra, out, staging, opts, start)
        result = run_bounded(run, args, opts.timeout, opts.max_memory, progress or Progress(),
                             setup) if opts.bounded else run(*args, progress or Progress())
        publish(staging, out, opts.overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _run(src: Path, out: Path, staging: Path, opts: FreezeOptions, start: float,
         progress: Progress) -> FreezeResult:
    """A conversion, up to the publish: the finished output is in staging."""
    stages = Stages(progress)
    ready = prepare(src, opts, stages, start)
    export = opts.export_options(ready.calibration)
    explicit = opts.targets != DEFAULT_TARGETS  # a default target may be skipped, not failed
    artifacts = []
    with writes_to(out):
        for fmt in opts.targets:
            with stages(f"{fmt}: export and verify"):
                report, preparation = export_target(fmt, ready.optimized, staging, out,
                                                    export, ready.check, opts.objective,
                                                    explicit)
            ready.reports += preparation
            artifacts.append(report)
        return finish(ready, artifacts, opts, out, staging, stages, start)


def _compare(src: Path, artifacts: list[tuple[str, Path]], out: Path, staging: Path,
             opts: FreezeOptions, start: float, progress: Progress) -> FreezeResult:
    """tfopt compare, up to the publish: given artifacts checked as a conversion's are."""
    stages = Stages(progress)
    ready = prepare(src, opts, stages, start)
    reports = []
    with writes_to(out):
        for fmt, path in artifacts:
            with stages(f"{fmt}: {path.name}: verify"):
                reports.append(check_artifact(fmt, path, ready.optimized.load(), ready.check, opts))
        return finish(ready, reports, opts, out, staging, stages, start)


@dataclass
class Prepared:
    """A source loaded, optimized, and run on the verification inputs: what every artifact
    is built from (a conversion) or checked against (tfopt compare)."""

    loaded: Loaded
    optimized: Spilled  # read back by each target: between exports no copy is held
    frozen: GraphSummary  # of the optimized graph
    reports: list[PassReport]  # the loader's and tfopt's passes, then the exporters'
    check: Check
    verification: dict
    found: list[IoOp]  # side-effect ops (security report)
    timings: dict[str, float]
    calibration: list[dict] | None


def prepare(src: Path, opts: FreezeOptions, stages: Stages, start: float) -> Prepared:
    """Load, read the user's data, optimize, run the original on the verification inputs."""
    compat.check_tensorflow()
    stages.large_blocks_mapped = map_large_blocks(path_bytes(src))
    loaded, model, found = load_source(src, opts, stages)
    timings = {"load": round(time.perf_counter() - start, 2)}
    data = read_data(model, opts)
    mark = time.perf_counter()
    with stages(f"{len(opts.passes)} passes"):
        optimized, reports = run_pipeline(model, opts.passes)
    timings["passes"] = round(time.perf_counter() - mark, 2)
    unoptimized = Spilled.of(model)  # for a trace, after the exports
    del model
    kept = Spilled.of(optimized)
    frozen = GraphSummary(len(optimized.graph_def.node), op_histogram(optimized.graph_def),
                          constant_bytes(optimized.graph_def), optimized.weight_bytes)
    mark = time.perf_counter()  # the reference run, its noise floor and batch included
    check, verification = reference_check(loaded, optimized, kept, unoptimized, data, opts,
                                          stages)
    timings["reference"] = round(time.perf_counter() - mark, 2)
    del optimized
    loaded.release()
    return_freed_memory()
    return Prepared(loaded, kept, frozen, loaded.passes + reports, check, verification, found,
                    timings, data.calibration)


def load_source(src: Path, opts: FreezeOptions, stages: Stages
                ) -> tuple[Loaded, Model, list[IoOp]]:
    """The source loaded and frozen, its side-effect ops refused unless allowed (before
    anything runs the model), and --input-shape applied."""
    with stages(f"load {src.name}"):
        loaded = load(src, opts.load_options())
    loaded.reference = widened(loaded.reference)
    check_graph_size(loaded.model.graph_def, opts.load_options(), "the frozen graph")
    found = io_ops(loaded.model.graph_def, src if src.is_dir() else None)
    refuse_io_ops(found, opts.allow_io_ops)
    return loaded, _fix_input_shapes(loaded.model, dict(opts.input_shapes)), found


def finish(ready: Prepared, artifacts: list[ArtifactReport], opts: FreezeOptions,
           out: Path, staging: Path, stages: Stages, start: float) -> FreezeResult:
    """The run's FreezeResult, written to staging as report.json and report.html."""
    model = ready.optimized.model  # its inputs and outputs (the graph is in its file)
    removed = Counter(dict.fromkeys(CATEGORIES, 0))
    removed.update(ready.loaded.removed)
    for report in ready.reports[len(ready.loaded.passes):]:  # the loader counted its own
        removed.update(report.removed)
    result = FreezeResult(
        tfopt_version=__version__, seconds=0.0, out_dir=str(out), source=ready.loaded.source,
        inputs=model.inputs, outputs=model.outputs, removed=dict(removed),
        passes=ready.reports,
        frozen=ready.frozen,
        artifacts=artifacts, timings=ready.timings,
        reference_accuracy=ready.check.reference_accuracy,
        security=security_report(ready.found, opts.allow_io_ops),
        verification=ready.verification, resources=stages.report(),
        versions=library_versions())
    result.seconds = round(time.perf_counter() - start, 2)
    write_result(result, staging)
    return result


def _fix_input_shapes(model: Model, shapes: dict[str, tuple[int, ...]]) -> Model:
    if not shapes:
        return model
    unknown = [k for k in shapes if k not in {t.name for t in model.inputs}]
    if unknown:
        raise UsageError(f"--input-shape names unknown input(s) {unknown}; inputs are "
                         f"{[t.name for t in model.inputs]}")
    for spec in model.inputs:
        shape = shapes.get(spec.name)
        if shape is not None and not spec.accepts(shape):
            raise UsageError(f"--input-shape {spec.name}={','.join(map(str, shape))} does "
                             f"not fit the input's shape {spec.to_dict()['shape']}")
    return model.with_input_shapes(shapes)
