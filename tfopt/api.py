"""The pipeline behind every entry point: load, freeze, run passes, export, verify, report."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from tfopt import __version__
from tfopt.categories import CATEGORIES
from tfopt.errors import ConversionError, InputError, UsageError, first_line
from tfopt.exporters import EXPORTERS, ExportOptions
from tfopt.graph import constant_bytes, op_histogram
from tfopt.loaders import LoadOptions, load
from tfopt.model import Model, TensorSpec, random_feeds
from tfopt.passes import DEFAULT_PIPELINE, run_pipeline
from tfopt.report import ArtifactReport, FreezeResult, GraphSummary
from tfopt.verify import compare

TARGETS = tuple(EXPORTERS)
DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-3


def freeze(src: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
           targets: Iterable[str] = TARGETS, signature: str = "serving_default",
           tags: Sequence[str] | None = None,
           input_shapes: Mapping[str, Sequence[int]] | None = None,
           inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None,
           freeze_placeholders: Mapping[str, object] | None = None,
           data: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
           samples: int = 3, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
           opset: int | None = None, overwrite: bool = False,
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
    user_feed = _read_data(data) if data is not None else None

    loaded = load(src, LoadOptions(signature=signature, tags=list(tags) if tags else None,
                                   inputs=list(inputs) if inputs else None,
                                   outputs=list(outputs) if outputs else None,
                                   freeze=dict(freeze_placeholders or {})))
    model = _fix_input_shapes(loaded.model, shapes)
    if user_feed is not None:
        _check_feed(user_feed, model.inputs)
    model, reports = run_pipeline(model, list(passes))
    reports = loaded.passes + reports
    feeds = [user_feed] if user_feed is not None else random_feeds(model.inputs, shapes, samples)
    try:
        expected = [loaded.reference(feed) for feed in feeds]
    except Exception as exc:  # TF raises many types for a feed the model rejects
        raise InputError(f"the original model rejects the verification inputs: "
                         f"{first_line(exc)}; check --input-shape or --data") from exc

    removed = Counter({c: 0 for c in CATEGORIES})
    removed.update(loaded.removed)
    for report in reports[len(loaded.passes):]:  # the loader counted its own passes
        removed.update(report.removed)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        artifacts = [_export(fmt, model, staging, out, ExportOptions(opset=opset), feeds,
                             expected, atol, rtol) for fmt in targets]
        result = FreezeResult(
            tfopt_version=__version__, seconds=0.0, out_dir=str(out), source=loaded.source,
            inputs=model.inputs, outputs=model.outputs, removed=dict(removed), passes=reports,
            frozen=GraphSummary(len(model.graph_def.node), op_histogram(model.graph_def),
                                constant_bytes(model.graph_def)),
            artifacts=artifacts)
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


def _read_data(data) -> dict[str, np.ndarray]:
    if isinstance(data, Mapping):
        return {k: np.asarray(v) for k, v in data.items()}
    path = Path(data)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read --data {path}: {first_line(exc)}; pass an .npz whose "
                         "keys are input names") from exc


def _check_feed(feed: dict, inputs: list[TensorSpec]) -> None:
    names = [t.name for t in inputs]
    missing, extra = [n for n in names if n not in feed], [k for k in feed if k not in names]
    if missing or extra:
        raise UsageError(f"--data keys {sorted(feed)} do not match the inputs {names}"
                         f" (missing: {missing}, unknown: {extra})")
    for spec in inputs:
        value = feed[spec.name]
        if not spec.accepts(value.shape):
            raise UsageError(f"--data '{spec.name}' has shape {list(value.shape)}, the input "
                             f"takes {list(spec.shape)}")
        feed[spec.name] = value.astype(spec.dtype, copy=False)


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


def _export(fmt, model, staging, out, options, feeds, expected, atol, rtol) -> ArtifactReport:
    exporter = EXPORTERS[fmt]
    path = staging / exporter.FILENAME
    start = time.perf_counter()
    try:
        exported = exporter.export(model, path, options)
    except Exception as exc:  # one target failing must not stop the others
        _remove(path)
        details = exc.details if isinstance(exc, ConversionError) else {}
        message = str(exc) if isinstance(exc, ConversionError) else \
            f"{fmt} export failed: {first_line(exc)}"
        return ArtifactReport(format=fmt, status="failed", error=message,
                              seconds=round(time.perf_counter() - start, 2),
                              attempts=details.get("attempts", []),
                              blocking_ops=details.get("blocking_ops", []))
    report = ArtifactReport(format=fmt, status="ok", path=str(out / exporter.FILENAME),
                            precision=exported.precision, fallback=exported.fallback,
                            attempts=exported.attempts, steps=exported.steps,
                            seconds=round(time.perf_counter() - start, 2))
    report.bytes = _bytes(path)
    report.ops = exporter.describe(path, model)
    report.nodes = sum(report.ops.values())
    try:
        run = exporter.runner(path, model)
        actual = [run(feed) for feed in feeds]
    except Exception as exc:  # the artifact's own runtime refused it: a failed target
        _remove(path)
        report.error = f"{fmt} runtime cannot run the artifact: {first_line(exc)}"
        report.blocking_ops = sorted(op for op in report.ops if op.startswith("Flex"))
        report.status, report.path, report.bytes, report.nodes, report.ops = \
            "failed", None, None, None, {}
        return report
    report.parity = compare(expected, actual, atol, rtol)
    return report


def _bytes(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


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
