"""The pipeline behind every entry point: load, freeze, run passes, export, verify, report."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from tfopt import __version__
from tfopt.categories import CATEGORIES
from tfopt.errors import InputError, UsageError, first_line
from tfopt.artifacts import build_and_check
from tfopt.data import read_feeds
from tfopt.exporters import EXPORTERS, ExportOptions
from tfopt.exporters.base import CALIBRATED, QUANTIZE_MODES
from tfopt.graph import constant_bytes, op_histogram
from tfopt.loaders import LoadOptions, load
from tfopt.model import Model, random_feeds
from tfopt.passes import DEFAULT_PIPELINE, run_pipeline
from tfopt.report import ArtifactReport, FreezeResult, GraphSummary
from tfopt.quantize import choose_precision
from tfopt.verify import BUDGETS, Budget, Check, top1_accuracy

TARGETS = tuple(EXPORTERS)
DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-3
VERIFY_SAMPLES = 64  # calibration samples that quantized artifacts are checked on


def freeze(src: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
           targets: Iterable[str] = TARGETS, signature: str = "serving_default",
           tags: Sequence[str] | None = None,
           input_shapes: Mapping[str, Sequence[int]] | None = None,
           inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None,
           freeze_placeholders: Mapping[str, object] | None = None,
           data: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
           samples: int = 3, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
           opset: int | None = None, overwrite: bool = False,
           quantize: str = "none", calibration=None, eval_data=None,
           mean: float = 0.0, scale: float = 1.0, int8_io: bool = False,
           max_drop: float | None = None, objective: str = "size",
           min_cosine: float | None = None, min_agreement: float | None = None,
           passes: Sequence[str] = tuple(DEFAULT_PIPELINE)) -> FreezeResult:
    """Freeze a TensorFlow model into verified deployment artifacts.

    Args:
        src: a TF2 or TF1 SavedModel directory, a Keras `.keras`/`.h5` file, a TF1
            checkpoint (its `.meta` file or prefix) or a GraphDef `.pb`/`.pbtxt`. It is never
            modified.
        out_dir: where to write; defaults to `tfopt_out/<source name>`. It must not exist or
            be empty unless `overwrite`. It appears only once everything is written.
        targets: any of "onnx", "tflite", "pb", "saved_model".
        signature, tags: which SavedModel signature and MetaGraph tag set to freeze.
        input_shapes: fixed shapes per input name; they replace unknown dims in every artifact.
        inputs: TF1 graphs: tensors to feed, as "name[:dtype[:d1,d2,...]]"; each is replaced by
            a placeholder (e.g. "IteratorGetNext:0:float32:1,224,224,3").
        outputs: TF1 graphs: output tensors; required for a checkpoint with several
            candidate outputs.
        freeze_placeholders: TF1 graphs: placeholder name -> value, e.g. {"is_training":
            False}; PlaceholderWithDefault nodes that are not inputs take their defaults.
        data: an `.npz` path or a dict of arrays keyed by input name, used instead of
            `samples` random inputs for verification.
        atol, rtol: parity tolerance; an element passes if |a-e| <= atol + rtol*|e|.
        opset: ONNX opset; default: the highest both tf2onnx and onnxruntime support.
        quantize: "none", "fp16", "dynamic", "int8", "int16x8" or "auto", for the tflite
            and onnx targets (.pb and SavedModel stay fp32).
        calibration: calibration data for int8/int16x8 (and auto): an `.npz` keyed by input
            name, a directory of `.npy` files or images, "module:function" returning feed
            dicts, a dict of arrays, or "random" (with a warning). Images are resized and
            normalized as (pixel - mean) * scale.
        eval_data: an `.npz` of inputs plus `labels`: quantized artifacts are verified on it
            and each one's top-1 accuracy is reported next to the original's.
        int8_io: TFLite int8 with integer inputs and outputs.
        max_drop: the accuracy drop (with eval_data) quantized artifacts may show; auto
            chooses within it. min_cosine, min_agreement: override the per-precision budget.
        objective: "size" or "latency": what auto optimizes among the candidates within
            budget that are not slower than fp32.

    Returns:
        A FreezeResult. A target that failed to convert or verify is recorded there, not
        raised; `result.exit_code` is 3 then, or 4 if only parity failed.

    Raises:
        UsageError, InputError: bad arguments or an unreadable source (exit code 2).
    """
    start = time.perf_counter()
    targets = _check_targets(targets)
    src = Path(src)
    out = Path(out_dir) if out_dir is not None else Path("tfopt_out") / (src.stem or "model")
    _check_output(src, out, overwrite)
    shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    _check_quantize(quantize, calibration, objective)

    timings = {}
    loaded = load(src, LoadOptions(signature=signature, tags=list(tags) if tags else None,
                                   inputs=list(inputs) if inputs else None,
                                   outputs=list(outputs) if outputs else None,
                                   freeze=dict(freeze_placeholders or {})))
    timings["load"] = round(time.perf_counter() - start, 2)
    model = _fix_input_shapes(loaded.model, shapes)
    calibration_feeds = None if calibration is None else read_feeds(
        calibration, model.inputs, "--calibration", mean=mean, scale=scale)[0]
    labels = None
    if eval_data is not None:
        feeds, extra = read_feeds(eval_data, model.inputs, "--eval", extra_keys=("labels",))
        labels = extra.get("labels")
        if labels is None:
            raise UsageError("--eval needs a 'labels' array next to the inputs in its .npz")
    elif data is not None:
        feeds = read_feeds(data, model.inputs, "--data")[0]
    elif quantize != "none" and calibration_feeds is not None:
        feeds = calibration_feeds[:VERIFY_SAMPLES]
    else:
        feeds = random_feeds(model.inputs, shapes, samples)
    mark = time.perf_counter()
    model, reports = run_pipeline(model, list(passes))
    timings["passes"] = round(time.perf_counter() - mark, 2)
    reports = loaded.passes + reports
    mark = time.perf_counter()
    try:
        expected = [loaded.reference(feed) for feed in feeds]
        timings["reference"] = round(time.perf_counter() - mark, 2)
    except Exception as exc:  # TF raises many types for a feed the model rejects
        raise InputError(f"the original model rejects the verification inputs: "
                         f"{first_line(exc)}; check --input-shape or --data") from exc
    check = Check(feeds, expected, atol, rtol, labels,
                  top1_accuracy(expected, labels) if labels is not None else None,
                  _budgets(max_drop, min_cosine, min_agreement))

    removed = Counter({c: 0 for c in CATEGORIES})
    removed.update(loaded.removed)
    for report in reports[len(loaded.passes):]:  # the loader counted its own passes
        removed.update(report.removed)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        options = ExportOptions(opset=opset, quantize=quantize, calibration=calibration_feeds,
                                int8_io=int8_io)
        artifacts = [_export(fmt, model, staging, out, options, check, objective)
                     for fmt in targets]
        result = FreezeResult(
            tfopt_version=__version__, seconds=0.0, out_dir=str(out), source=loaded.source,
            inputs=model.inputs, outputs=model.outputs, removed=dict(removed), passes=reports,
            frozen=GraphSummary(len(model.graph_def.node), op_histogram(model.graph_def),
                                constant_bytes(model.graph_def)),
            artifacts=artifacts, timings=timings,
            reference_accuracy=check.reference_accuracy)
        result.seconds = round(time.perf_counter() - start, 2)
        (staging / "report.json").write_text(result.to_json())
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _check_targets(targets: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(t.strip() for t in targets if t.strip()))
    unknown = [t for t in chosen if t not in EXPORTERS]
    if unknown or not chosen:
        raise UsageError(f"unknown target '{','.join(unknown)}'; choose from "
                         f"{', '.join(TARGETS)}")
    return chosen


def _check_output(src: Path, out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} is a file; choose a directory with -o")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"output directory {out} is not empty; pass --overwrite or choose "
                         "another -o")
    resolved_src, resolved_out = src.resolve(), out.resolve()
    if resolved_out == resolved_src or resolved_src in resolved_out.parents \
            or resolved_out in resolved_src.parents:
        raise UsageError(f"output {out} overlaps the source {src}; choose an -o outside it")


def _check_quantize(quantize: str, calibration, objective: str) -> None:
    if quantize not in QUANTIZE_MODES + ("auto",):
        raise UsageError(f"unknown --quantize '{quantize}'; choose from "
                         f"{', '.join(QUANTIZE_MODES)}, auto")
    if quantize in CALIBRATED and calibration is None:
        raise UsageError(f"--quantize {quantize} needs calibration data: pass --calibration "
                         "train_sample.npz (keys: input names), a directory of .npy files or "
                         "images, or module:function; --calibration random only to try it out")
    if objective not in ("size", "latency"):
        raise UsageError(f"unknown --objective '{objective}'; choose size or latency")


def _budgets(max_drop, min_cosine, min_agreement) -> dict[str, Budget]:
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
                             f"not fit the input's shape {list(spec.shape)}")
    return model.with_input_shapes(shapes)


def _export(fmt: str, model: Model, staging: Path, out: Path, options: ExportOptions,
            check: Check, objective: str) -> ArtifactReport:
    exporter = EXPORTERS[fmt]
    if options.quantize == "auto" and exporter.MODES != {"none"}:
        report = choose_precision(fmt, model, staging / exporter.FILENAME, options, check,
                                  objective)
    else:
        note = None
        if options.quantize not in exporter.MODES:
            note = f"stays fp32: --quantize {options.quantize} applies to tflite and onnx"
            options = replace(options, quantize="none")
        report = build_and_check(fmt, model, staging / exporter.FILENAME, options, check)
        report.note = note
    if report.status == "ok":
        report.path = str(out / exporter.FILENAME)
    return report


def _publish(staging: Path, out: Path) -> None:
    """Move the finished output into place; an old output is replaced only now."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp made it private
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        out.rename(trash / out.name)
        staging.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(out)
