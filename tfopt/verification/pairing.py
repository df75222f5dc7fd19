"""Existing artifacts, tfopt's or another tool's (tf2onnx, the stock TFLite converter,
onnx2tf ...), paired with the source model's inputs and outputs and judged like a
conversion's (tfopt compare)."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tfopt.errors import InputError, first_line
from tfopt.exporters import EXPORTERS
from tfopt.exporters.base import Opened
from tfopt.files import path_bytes, tree_digest
from tfopt.model import Model, TensorSpec
from tfopt.options import FreezeOptions
from tfopt.results import ArtifactReport
from tfopt.verification.artifacts import trace_if_asked
from tfopt.verification.checks import Check, batch_size, feed_shapes, widened


def artifact_format(path: Path) -> str:
    """The format of an artifact path: by its exporter's suffix, or the file its directory
    holds."""
    for name, exporter in EXPORTERS.items():
        if exporter.SUFFIX.startswith("."):
            if path.is_file() and path.suffix.lower() == exporter.SUFFIX:
                return name
        elif path.is_dir() and (path / exporter.SUFFIX).is_file():
            return name
    if not path.exists():
        raise InputError(f"artifact {path} does not exist")
    raise InputError(f"artifact {path} is not {artifact_kinds()}; those are what tfopt "
                     "compare can run")


def artifact_kinds() -> str:
    """What tfopt compare takes, in words: "a .onnx, .pb or .tflite file or a directory
    holding saved_model.pb"."""
    files = sorted(e.SUFFIX for e in EXPORTERS.values() if e.SUFFIX.startswith("."))
    held = sorted(e.SUFFIX for e in EXPORTERS.values() if not e.SUFFIX.startswith("."))
    return f"a {', '.join(files)} file" + "".join(f" or a directory holding {h}" for h in held)


def check_artifact(fmt: str, path: Path, model: Model, check: Check,
                   opts: FreezeOptions) -> ArtifactReport:
    """Open, pair, run on the check's feeds, and judge one existing artifact."""
    exporter = EXPORTERS[fmt]
    report = ArtifactReport(format=fmt, status="ok", path=str(path))
    start = time.perf_counter()
    try:
        opened = exporter.open_artifact(path, opts.signature, opts.allow_io_ops)
    except InputError:
        raise
    except Exception as exc:  # each runtime raises its own types for a file it cannot load
        report.status, report.error = "failed", \
            f"{fmt} runtime cannot load {path.name}: {first_line(exc)}"
        return report
    report.bytes, report.sha256 = path_bytes(path, exporter.COMPANIONS), \
        tree_digest(path, exporter.COMPANIONS)
    report.ops = exporter.describe(path, replace(model, signature=opened.signature
                                                 or model.signature))
    report.nodes = sum(report.ops.values())
    report.precision = exporter.read_precision(path)
    run = PairedRun(opened, model, check.feeds[0], check.expected[0], path.name)
    try:
        actual = [run(feed) for feed in check.feeds]
    except InputError:
        raise
    except Exception as exc:  # the runtime refused the inputs: the artifact cannot run
        report.status, report.error = "failed", \
            f"{fmt} runtime cannot run {path.name}: {first_line(exc)}"
        return report
    report.batch = {"verified": sorted({batch_size(feed) for feed in check.feeds})}
    batched = None
    if check.batched is not None:
        try:
            batched = run(check.batched)
            report.batch["verified"].append(check.batch_size)
        except Exception as exc:  # a fixed batch: said, not failed (the user made it so)
            report.batch["limit"] = f"runs batch {check.batch_size}: no ({first_line(exc)})"
    report.shapes = {"verified": [feed_shapes(check.feeds[0])]}
    reshaped = None
    if check.reshaped is not None:
        try:
            reshaped = run(check.reshaped)
            report.shapes["verified"].append(feed_shapes(check.reshaped))
        except Exception as exc:  # a fixed size: said, not failed (the user made it so)
            report.shapes["limit"] = f"runs {feed_shapes(check.reshaped)}: no " \
                                     f"({first_line(exc)})"
    report.verify_seconds = round(time.perf_counter() - start, 2)
    report.seconds = report.verify_seconds
    report.parity = check.verdict(actual, report.precision, batched, reshaped)
    if not report.parity.passed:
        report.status = "differs"
    ours = {theirs: name for name, theirs in run.outputs.items()}
    trace_if_asked(report, check, lambda: {
        ours.get(k, k): v for k, v in exporter.trace(path, run.given(check.feeds[0]),
                                                     opened.signature).items()})
    report.note = "; ".join(filter(None, [  # the file first: a table row names only the format
        path.name, f"signature '{opened.signature}'"
        if opened.signature not in (None, model.signature) else None, run.note]))
    return report


CHANNELS_FIRST = "channels-first"


@dataclass
class Pairing:
    """model tensor name -> (artifact tensor name, axis order to apply or None)."""

    names: dict[str, str]
    layout: dict[str, tuple[int, ...] | None]


def _normalized(name: str) -> str:
    """A name as producers rewrite it: tf2onnx's ':0', the converter's 'serving_default_'."""
    name = name.lower()
    if name.endswith(":0"):
        name = name[:-2]
    for prefix in ("serving_default_", "statefulpartitionedcall_"):
        name = name.removeprefix(prefix)
    return "".join(c if c.isalnum() else "_" for c in name)


def pair_names(mine: list[TensorSpec], theirs: list[TensorSpec], what: str,
               artifact: str) -> dict[str, str]:
    """Model names -> artifact names: the same name, then the same normalized name, then
    the rest by position; InputError when the counts differ."""
    if len(mine) != len(theirs):
        raise InputError(
            f"{artifact} has {len(theirs)} {what} ({', '.join(t.name for t in theirs)}) and "
            f"the model {len(mine)} ({', '.join(t.name for t in mine)}); they cannot be "
            "paired: is it an artifact of this model (and signature, --signature)?")
    left = {t.name for t in theirs}
    found: dict[str, str] = {}
    for match in (lambda a, b: a == b, lambda a, b: _normalized(a) == _normalized(b)):
        for spec in mine:
            if spec.name in found:
                continue
            hits = [t.name for t in theirs if t.name in left and match(spec.name, t.name)]
            if len(hits) == 1:
                found[spec.name] = hits[0]
                left.discard(hits[0])
    rest = [t.name for t in theirs if t.name in left]
    for spec in (s for s in mine if s.name not in found):
        found[spec.name] = rest.pop(0)
    return found


def layout_order(shape: tuple[int, ...], spec: TensorSpec | None,
                 target: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
    """None when `shape` fits as it is; the channels-first axis order when only the
    transposed shape fits (a spec with unknown dims, or a concrete target shape)."""
    def fits(candidate: tuple[int, ...]) -> bool:
        if target is not None:
            return tuple(candidate) == tuple(target)
        return spec is not None and spec.accepts(candidate)

    if fits(shape):
        return None
    rank = len(shape)
    if rank >= 3:
        order = (0, rank - 1, *range(1, rank - 1))
        if fits(tuple(shape[i] for i in order)):
            return order
    return ()  # fits neither way


class PairedRun:
    """Runs an opened artifact on the model's feeds: renamed, transposed where its layout is
    channels-first, and its outputs returned under the model's names, as the model lays
    them out."""

    def __init__(self, opened: Opened, model: Model, sample: dict, expected: dict,
                 artifact: str):
        self.opened, self.artifact = opened, artifact
        self._run = widened(opened.run)  # bfloat16 outputs as float32
        self.expected_shapes = {k: np.shape(v) for k, v in expected.items()}
        self.inputs = pair_names(model.inputs, opened.inputs, "inputs", artifact)
        specs = {t.name: t for t in opened.inputs}
        self.input_order: dict[str, tuple[int, ...] | None] = {}
        for name, value in sample.items():
            order = layout_order(np.shape(value), specs[self.inputs[name]])
            if order == ():
                raise InputError(
                    f"{artifact}'s input '{self.inputs[name]}' has shape "
                    f"{_shape(specs[self.inputs[name]])}, and the model's '{name}' is fed "
                    f"{list(np.shape(value))}: no layout pairs them; pass --input-shape or "
                    "--data with a shape it takes")
            self.input_order[name] = order
        self.outputs = pair_names(model.outputs, opened.outputs, "outputs", artifact)
        self.output_order: dict[str, tuple[int, ...] | None] = {}  # from the first run
        self.note: str | None = None

    def given(self, feed: dict) -> dict:
        """A feed of the model's, as the artifact takes it: renamed and laid out."""
        given = {}
        for name, value in feed.items():
            order = self.input_order[name]
            given[self.inputs[name]] = value if order is None else np.transpose(value, order)
        return given

    def __call__(self, feed: dict) -> dict:
        got = self._run(self.given(feed))
        return {name: self._read(name, np.asarray(got[theirs]))
                for name, theirs in self.outputs.items()}

    def _read(self, name: str, value: np.ndarray) -> np.ndarray:
        if name not in self.output_order:
            self._learn_layout(name, value)
        order = self.output_order[name]
        return value if order is None else np.transpose(value, np.argsort(order))

    def _learn_layout(self, name: str, value: np.ndarray) -> None:
        """The first run decides: as the original gave it, or channels-first."""
        order = layout_order(value.shape, None, self.expected_shapes[name])
        self.output_order[name] = order or None  # a shape that fits neither: judged as is
        moved = [f"input '{k}'" for k, v in self.input_order.items() if v] + \
            [f"output '{k}'" for k, v in self.output_order.items() if v]
        if moved:
            self.note = (f"{CHANNELS_FIRST} layout paired by transposing "
                         f"{', '.join(moved)}")


def _shape(spec: TensorSpec) -> str:
    return "unknown" if spec.shape is None else \
        "[" + ", ".join("?" if d is None else str(d) for d in spec.shape) + "]"
