"""The pipeline behind every entry point: load, freeze, run passes, export, verify, report."""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from tfopt import __version__, compat
from tfopt.artifacts import build_and_check
from tfopt.categories import CATEGORIES
from tfopt.data import read_feeds
from tfopt.divergence import Tracer
from tfopt.errors import InputError, UsageError, first_line
from tfopt.exporters import EXPORTERS, ExportOptions
from tfopt.exporters import prepare as prepare_for
from tfopt.graph import (
    compute_precision,
    constant_bytes,
    fake_quant_nodes,
    fake_quant_steps,
    non_finite_constants,
    op_histogram,
)
from tfopt.inputs import draw, input_domains
from tfopt.limits import run_bounded
from tfopt.loaders import Loaded, check_exists, detect_format, load
from tfopt.loaders.base import check_graph_size
from tfopt.model import SECOND_SIZES, Model
from tfopt.modes import Budget
from tfopt.options import DEFAULT_TARGETS, FreezeOptions, calibration_needed
from tfopt.output import check_output, make_staging, publish, writes_to
from tfopt.pages import write_report
from tfopt.pairing import artifact_format, check_artifact
from tfopt.passes import run_pipeline
from tfopt.progress import Progress
from tfopt.quantize import choose_precision
from tfopt.report import WRITTEN, ArtifactReport, FreezeResult, GraphSummary
from tfopt.resources import Stages
from tfopt.security import io_ops, refuse_io_ops, security_report
from tfopt.verify import (
    BUDGETS,
    MANTISSA_BITS,
    Check,
    feed_shapes,
    noise_floor,
    top1_accuracy,
    widened,
)

VERIFY_SAMPLES = 64  # calibration samples that quantized artifacts are checked on


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
        progress: where to show the stages as they run (tfopt.progress); none by default.
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


def _compare(src: Path, artifacts: list[tuple[str, Path]], out: Path, staging: Path,
             opts: FreezeOptions, start: float, progress: Progress) -> FreezeResult:
    stages = Stages(progress)
    ready = prepare(src, opts, stages, start)
    reports = []
    with writes_to(out):
        for fmt, path in artifacts:
            with stages(f"{fmt}: {path.name}: verify"):
                reports.append(check_artifact(fmt, path, ready.model, ready.check, opts))
        return write_result(ready, reports, opts, out, staging, stages, start)


@dataclass
class Prepared:
    """A source loaded, optimized, and run on the verification inputs: what every artifact
    is built from (a conversion) or checked against (tfopt compare)."""

    loaded: Loaded
    model: Model  # the optimized graph
    reports: list  # the passes', the exporters' preparation passes appended
    check: Check
    verification: dict
    removed: Counter
    found: list  # side-effect ops (security report)
    timings: dict
    calibration: list[dict] | None


def prepare(src: Path, opts: FreezeOptions, stages: Stages, start: float) -> Prepared:
    """Load, optimize, draw or read the verification inputs, run the original on them."""
    compat.check_tensorflow()
    timings = {}
    with stages(f"load {src.name}"):
        loaded = load(src, opts.load_options())
    loaded.reference = widened(loaded.reference)
    timings["load"] = round(time.perf_counter() - start, 2)
    check_graph_size(loaded.model.graph_def, opts.load_options(), "the frozen graph")
    found = io_ops(loaded.model.graph_def, src if src.is_dir() else None)
    refuse_io_ops(found, opts.allow_io_ops)  # before anything runs the model
    model = _fix_input_shapes(loaded.model, dict(opts.input_shapes))
    fake_quants = len(fake_quant_nodes(model.graph_def))
    if opts.quantize == "int8" and opts.calibration is None and not fake_quants:
        raise UsageError(calibration_needed(opts.quantize))
    calibration_feeds = None if opts.calibration is None else read_feeds(
        opts.calibration, model.inputs, "--calibration", mean=opts.mean, scale=opts.scale)[0]
    labels, feeds = None, None
    if opts.eval_data is not None:
        feeds, extra = read_feeds(opts.eval_data, model.inputs, "--eval",
                                  extra_keys=("labels",))
        labels = extra.get("labels")
        if labels is None:
            raise UsageError("--eval needs a 'labels' array next to the inputs in its .npz")
    elif opts.data is not None:
        feeds = read_feeds(opts.data, model.inputs, "--data")[0]
    elif opts.quantize != "none" and calibration_feeds is not None:
        feeds = calibration_feeds[:VERIFY_SAMPLES]
    mark = time.perf_counter()
    unoptimized = model  # what the trace also compares with (tfopt's passes rename nothing
    with stages(f"{len(opts.passes)} passes"):  # but change what some names hold)
        model, reports = run_pipeline(model, opts.passes)
    timings["passes"] = round(time.perf_counter() - mark, 2)
    reports = loaded.passes + reports
    drawn = None
    if feeds is None:  # drawn from the domain the optimized graph shows (constants folded)
        domains = input_domains(model, dict(opts.input_shapes))
        feeds = draw(domains, model.inputs, opts.samples)
        drawn = {name: domain.to_dict() for name, domain in domains.items()}
    mark = time.perf_counter()
    with stages(f"the original on {len(feeds)} verification inputs"):
        try:
            expected = [loaded.reference(feed) for feed in feeds]
        except Exception as exc:  # TF raises many types for a feed the model rejects
            raise InputError(f"the original model rejects the verification inputs: "
                             f"{first_line(exc)}; check --input-shape or --data") from exc
        _check_finite(model, expected)
        compute = compute_precision(model.graph_def)
        floor = noise_floor(loaded.reference, feeds, expected, compute=compute)
        batched = _batched(model, feeds) if labels is None else None
        batched_expected = None if batched is None else _batch_reference(loaded, batched)
        reshaped, reshaped_expected, passed_over = (None, None, []) if drawn is None else \
            _other_size(model, loaded, dict(opts.input_shapes))
    timings["reference"] = round(time.perf_counter() - mark, 2)  # noise floor, batch included
    check = Check(feeds, expected, opts.atol, opts.rtol, labels,
                  top1_accuracy(expected, labels) if labels is not None else None,
                  _budgets(opts.max_drop, opts.min_cosine, opts.min_agreement), floor,
                  batched if batched_expected is not None else None, batched_expected,
                  reshaped, reshaped_expected,
                  Tracer(model, feeds[0], compute, unoptimized), opts.trace,
                  fake_quant_steps(model.graph_def, [o.name for o in model.outputs]))
    verification = _verification(drawn, floor, expected, opts, check.batch_size, compute)
    verification["shapes"] = [feed_shapes(feeds[0])] + (
        [feed_shapes(check.reshaped)] if check.reshaped is not None else [])
    verification["notes"] += passed_over
    if fake_quants:
        verification["notes"].append(
            f"the model is quantization-aware ({fake_quants} fake-quant ops): an output on "
            "a fake-quant grid may differ by one step of it, and --quantize int8 takes the "
            "model's own ranges (calibration data, if given, only for ops it left float)")
    removed = Counter(dict.fromkeys(CATEGORIES, 0))
    removed.update(loaded.removed)
    for report in reports[len(loaded.passes):]:  # the loader counted its own passes
        removed.update(report.removed)
    return Prepared(loaded, model, reports, check, verification, removed, found, timings,
                    calibration_feeds)


def _run(src: Path, out: Path, staging: Path, opts: FreezeOptions, start: float,
         progress: Progress) -> FreezeResult:
    """Everything up to the publish: the finished output is in staging."""
    stages = Stages(progress)
    ready = prepare(src, opts, stages, start)
    export = ExportOptions(opset=opts.opset, quantize=opts.quantize,
                           calibration=ready.calibration, int8_io=opts.int8_io)
    artifacts = []
    with writes_to(out):
        for fmt in opts.targets:
            with stages(f"{fmt}: export and verify"):
                prepared, prepared_reports = prepare_for(fmt, ready.model)
                ready.reports += prepared_reports
                report = _export(fmt, prepared, staging, out, export, ready.check,
                                 opts.objective, opts.targets != DEFAULT_TARGETS)
                # a preparation pass that changes how the artifact computes says so
                report.note = "; ".join(filter(None, [report.note] + [
                    c.get("note") for r in prepared_reports for c in r.changes])) or None
                artifacts.append(report)
        return write_result(ready, artifacts, opts, out, staging, stages, start)


def write_result(ready: Prepared, artifacts: list[ArtifactReport], opts: FreezeOptions,
                 out: Path, staging: Path, stages: Stages, start: float) -> FreezeResult:
    """The run's FreezeResult, written to staging as report.json and report.html."""
    model = ready.model
    result = FreezeResult(
        tfopt_version=__version__, seconds=0.0, out_dir=str(out), source=ready.loaded.source,
        inputs=model.inputs, outputs=model.outputs, removed=dict(ready.removed),
        passes=ready.reports,
        frozen=GraphSummary(len(model.graph_def.node), op_histogram(model.graph_def),
                            constant_bytes(model.graph_def), model.weight_bytes),
        artifacts=artifacts, timings=ready.timings,
        reference_accuracy=ready.check.reference_accuracy,
        security=security_report(ready.found, opts.allow_io_ops),
        verification=ready.verification, resources=stages.report())
    result.seconds = round(time.perf_counter() - start, 2)
    written = result.to_json()
    (staging / "report.json").write_text(written)
    write_report(staging, json.loads(written))
    return result


def _check_finite(model: Model, expected: list[dict]) -> None:
    """Non-finite weights or reference outputs make every comparison meaningless: name
    them instead of reporting a tolerance failure."""
    bad = non_finite_constants(model.graph_def)
    bad += [(name, int(v.size - np.isfinite(v).sum())) for name, v in model.weights.items()
            if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:
        shown = ", ".join(f"{name} ({count})" for name, count in bad[:3])
        raise InputError(f"the model's weights hold NaN or Inf values: {shown}"
                         + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                         + "; fix the training run that produced them")
    for name in expected[0] if expected else ():
        values = [np.asarray(sample[name]) for sample in expected]
        count = sum(int((~np.isfinite(v)).sum()) for v in values if v.dtype.kind == "f")
        if count:
            raise InputError(f"the original model's output '{name}' holds {count} NaN or Inf "
                             "values on the verification inputs, so nothing can be compared; "
                             "pass in-domain inputs with --data")


BATCH = 4  # samples stacked into the one batch every dynamic-batch artifact is checked on


def _batched(model: Model, feeds: list[dict]) -> dict | None:
    """The first samples as one batch, when every input's batch is dynamic and each feed
    holds one sample."""
    if len(feeds) < 2 or not all(t.shape and t.shape[0] is None for t in model.inputs):
        return None
    if any(np.asarray(v).shape[:1] != (1,) for feed in feeds for v in feed.values()):
        return None
    chosen = feeds[:BATCH]
    return {k: np.concatenate([feed[k] for feed in chosen]) for k in chosen[0]}


def _batch_reference(loaded: Loaded, batched: dict) -> dict | None:
    """The original's outputs on the batch; None (no batch check) if it refuses it."""
    try:
        return loaded.reference(batched)
    except Exception as exc:  # TF raises many types for a feed the model rejects
        warnings.warn(f"the original model does not run a batch of {BATCH}: "
                      f"{first_line(exc)}; artifacts are verified at batch 1 only", stacklevel=3)
        return None


def _other_size(model: Model, loaded: Loaded, shapes: dict[str, tuple[int, ...]]
                ) -> tuple[dict | None, dict | None, list[str]]:
    """One drawn feed at another size of the inputs whose sequence or spatial dims are
    unknown (and not set by --input-shape), the first of SECOND_SIZES the original runs
    and runs the same twice, its outputs there, and a note per size passed over."""
    passed_over = []
    for spatial, sequence in SECOND_SIZES:
        other: dict[str, tuple[int, ...]] = {}
        for spec in model.inputs:
            shape = None if spec.name in shapes else spec.other_shape(spatial, sequence)
            if shape is not None:
                other[spec.name] = shape
        if not other:
            return None, None, []
        feed = draw(input_domains(model, {**shapes, **other}), model.inputs, 1, seed=1)[0]
        try:
            first, again = loaded.reference(feed), loaded.reference(feed)
        except Exception as exc:  # TF raises many types for a feed the model rejects
            passed_over.append(f"the original does not run at {feed_shapes(feed)} "
                               f"({first_line(exc)[:120]})")
            continue
        if all(_same(first[k], again[k]) for k in first):
            return feed, first, passed_over
        passed_over.append(f"the original gives other outputs on a second run at "
                           f"{feed_shapes(feed)}, so nothing can be judged there")
    warnings.warn(f"{'; '.join(passed_over)}: artifacts are verified at one size only",
                  stacklevel=3)
    return None, None, passed_over


def _same(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    return bool(np.allclose(a, b, rtol=1e-6, atol=0.0, equal_nan=True))


CHAOTIC = 1e-3  # noise floor over output scale beyond which inputs look out of domain


def _verification(drawn: dict | None, floor: dict[str, float], expected: list[dict],
                  opts: FreezeOptions, batch: int | None, compute: str) -> dict:
    """What the artifacts were checked on and against, for the report."""
    source = "--eval" if opts.eval_data is not None else "--data" if opts.data is not None \
        else "calibration samples" if drawn is None else "drawn by tfopt"
    notes = []
    chaotic = CHAOTIC  # per float32 ulp; a coarser ulp moves the outputs further
    if compute in MANTISSA_BITS:
        chaotic *= 2.0 ** (23 - MANTISSA_BITS[compute])
        notes.append(f"the original computes in {compute} (a mixed-precision policy): its "
                     f"noise floor moves the inputs by one {compute} ulp")
    for name, value in floor.items():
        scale = max(float(np.max(np.abs(np.asarray(s[name], np.float64)))) for s in expected)
        if scale and value > chaotic * scale:
            notes.append(f"output '{name}' of the original moves by {value:.3g} "
                         f"({value / scale:.1%} of its scale) when its inputs move by one "
                         "ulp: the inputs are "
                         "probably outside the model's domain; pass representative --data")
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return {"inputs": source, "drawn": drawn, "samples": len(expected), "batch": batch,
            "rule": "elementwise" if opts.atol is not None or opts.rtol is not None
            else "scale", "noise_floor": floor, "notes": notes}


def _budgets(max_drop: float | None, min_cosine: float | None,
             min_agreement: float | None) -> dict[str, Budget]:
    overrides = {k: v for k, v in (("max_drop", max_drop), ("min_cosine", min_cosine),
                                   ("min_agreement", min_agreement)) if v is not None}
    return {precision: replace(budget, **overrides) for precision, budget in BUDGETS.items()}


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


def _export(fmt: str, model: Model, staging: Path, out: Path, options: ExportOptions,
            check: Check, objective: str, explicit: bool) -> ArtifactReport:
    exporter = EXPORTERS[fmt]
    if options.quantize == "auto" and {"none"} != exporter.MODES:
        report = choose_precision(fmt, model, staging / exporter.FILENAME, options, check,
                                  objective)
    else:
        note = None
        if options.quantize not in exporter.MODES:
            takers = [name for name, e in EXPORTERS.items() if options.quantize in e.MODES]
            note = f"stays fp32: --quantize {options.quantize} applies to {', '.join(takers)}"
            options = replace(options, quantize="none")
        report = build_and_check(fmt, model, staging / exporter.FILENAME, options, check,
                                 explicit)
        report.note = "; ".join(filter(None, [note, report.note])) or None
    if report.status in WRITTEN:
        report.path = str(out / exporter.FILENAME)
    return report
