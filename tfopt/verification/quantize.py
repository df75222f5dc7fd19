"""--quantize auto: per target, try the precisions from the most compressed, keep layers that
int8 hurts most in float, and choose the best artifact within budget that is not slower
than fp32 on this machine (latency is measured, not assumed)."""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from tfopt.exporters import EXPORTERS, ExportOptions
from tfopt.graph import consumers, plain_session
from tfopt.model import Model
from tfopt.modes import AUTO_ORDER, MODES
from tfopt.results import ArtifactReport
from tfopt.verification.artifacts import build_and_check, move, remove
from tfopt.verification.checks import Check

FALLBACK_LAYERS = (1, 2, 4, 8)  # how many of the worst layers int8 may keep in float
LATENCY_SLACK = 1.05  # "not slower than fp32" within the noise of a median on a busy CPU
LATENCY_RUNS = 20


def median_ms(call, runs: int, warmup: int = 3) -> float:
    """Median wall time of call() in milliseconds, after a few warm-up calls (also used by
    the benchmark scripts, so that every latency figure is taken the same way)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 4)


def latency_ms(fmt: str, model: Model, path: Path, feed: dict) -> float:
    """Median wall time of one inference on one feed."""
    run = EXPORTERS[fmt].runner(path, model)
    return median_ms(lambda: run(feed), LATENCY_RUNS)


def choose_precision(fmt: str, model: Model, path: Path, options: ExportOptions,
                     check: Check, objective: str = "size") -> ArtifactReport:
    """Build every candidate for one target, then move the chosen one to path."""
    work = Path(tempfile.mkdtemp(prefix=f".{fmt}-auto-", dir=path.parent))
    try:
        tried: list[tuple[ArtifactReport, Path, float | None]] = []

        def attempt(label: str, mode: str, float_layers=()) -> ArtifactReport:
            candidate = work / label / path.name
            candidate.parent.mkdir()
            report = build_and_check(fmt, model, candidate, replace(
                options, quantize=mode, float_layers=tuple(float_layers)), check)
            speed = latency_ms(fmt, model, candidate, check.feeds[0]) \
                if report.status == "ok" else None
            tried.append((report, candidate, speed))
            return report

        baseline = attempt("fp32", "none")
        calibrated = options.calibration is not None
        layer_errors: list[dict] = []
        for mode in AUTO_ORDER:  # the target's modes; calibrated ones with calibration data
            if mode not in EXPORTERS[fmt].MODES or (MODES[mode].calibrated and not calibrated):
                continue
            report = attempt(mode, mode)
            if mode == "int8" and report.parity is not None and not report.parity.passed:
                layer_errors = _with_float_layers(model, options, attempt)
        chosen = _choose(tried, baseline, objective)
        summary = [{"precision": r.precision, "float_layers": list(r.float_layers),
                    "status": r.status, "bytes": r.bytes, "latency_ms": speed,
                    "within_budget": bool(r.parity and r.parity.passed),
                    "cosine": r.parity.cosine if r.parity else None,
                    "top1_agreement": r.parity.top1_agreement if r.parity else None,
                    "accuracy": r.parity.accuracy if r.parity else None,
                    "error": r.error} for r, _, speed in tried]
        report, source, _ = chosen
        companions = EXPORTERS[fmt].COMPANIONS
        remove(path, companions)
        move(source, path, companions)
        report.auto = {"objective": objective, "tried": summary, "layer_errors": layer_errors,
                       "chosen": report.precision, "float_layers": list(report.float_layers)}
        if not calibrated:
            report.note = "auto: int8/int16x8 not tried without --calibration"
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _choose(tried, baseline: ArtifactReport, objective: str):
    """Within budget, not slower than fp32 (with slack), then smallest or fastest."""
    base_speed = next(s for r, _, s in tried if r is baseline)
    fits = [(r, p, s) for r, p, s in tried if r.status == "ok" and r.parity.passed
            and (base_speed is None or s is None or s <= base_speed * LATENCY_SLACK)]
    if not fits:
        return next(t for t in tried if t[0] is baseline)
    key = (lambda t: (t[0].bytes, t[2])) if objective == "size" else (lambda t: (t[2], t[0].bytes))
    return min(fits, key=key)


def _with_float_layers(model: Model, options: ExportOptions, attempt) -> list[dict]:
    """Retry int8 keeping the 1, 2, 4, 8 layers that int8 hurts most in float; returns the
    per-layer errors that ranked them, worst first."""
    scores = sorted(layer_sensitivity(model, options.calibration or []).items(),
                    key=lambda kv: -kv[1])
    layers = ranked_layers(model.graph_def, [name for name, _ in scores])
    for count in FALLBACK_LAYERS:
        if count > len(layers):
            break
        kept = [name for layer in layers[:count] for name in layer]
        report = attempt(f"int8_float{count}", "int8", kept)
        if report.status == "ok" and report.parity is not None and report.parity.passed:
            break
    return [{"layer": name, "int8_error": round(score, 6)} for name, score in scores[:20]]


def ranked_layers(graph_def, ranked: list[str]) -> list[list[str]]:
    """Ranked nodes grouped into layers, worst first: the nodes of one name scope (a Keras
    layer's MatMul, BiasAdd and Relu, which a converter fuses into one op) count as one,
    with the layout ops that carry their output to its next layer (a Flatten before a
    Dense: the Dense would quantize it again)."""
    readers = consumers(graph_def)
    groups: dict[str, list[str]] = {}
    for name in ranked:
        groups.setdefault(name.rpartition("/")[0] or name, []).append(name)
    layers = []
    for names in groups.values():
        frontier, kept = list(names), list(names)
        while frontier:
            for reader in readers.get(frontier.pop(), ()):
                if reader.op in _LAYOUT_OPS and reader.name not in kept:
                    kept.append(reader.name)
                    frontier.append(reader.name)
        layers.append(kept)
    return layers


# ops whose output is their input rearranged: quantizing them adds no error of their own
_LAYOUT_OPS = frozenset({"Const", "Placeholder", "Identity", "Reshape", "Squeeze", "ExpandDims",
                          "Shape", "StridedSlice", "Pack", "Transpose", "ConcatV2", "MaxPool"})
SENSITIVITY_SAMPLES = 16


def layer_sensitivity(model: Model, feeds: list[dict]) -> dict[str, float]:
    """Per TF node, the error that 8-bit per-tensor quantization of its output causes in its
    worst channel (RMS error over the channel's RMS), on the float model's activations.

    Per-tensor ranges are set by the largest channel, so a layer with a few huge activations
    wipes out its small channels: that is the layer to keep in float. The framework-neutral
    names (TF nodes) are mapped to each target's own ops by its exporter.
    """
    import numpy as np
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(model.graph_def, name="")
    tensors = [op.outputs[0] for op in graph.get_operations()
               if op.type not in _LAYOUT_OPS and op.outputs
               and op.outputs[0].dtype == tf.float32 and op.name not in
               {t.name for t in model.inputs}]
    values: dict[str, list] = {t.op.name: [] for t in tensors}
    with plain_session(graph) as session:
        for feed in feeds[:SENSITIVITY_SAMPLES]:
            results = session.run(tensors, {f"{k}:0": v for k, v in feed.items()})
            for tensor, value in zip(tensors, results):
                values[tensor.op.name].append(value)
    scores = {}
    for name, samples in values.items():
        x = np.concatenate([np.asarray(v, np.float64).reshape(len(v), -1)
                            if np.ndim(v) < 2 else np.asarray(v, np.float64) for v in samples])
        low, high = min(x.min(), 0.0), max(x.max(), 0.0)
        if x.ndim < 2 or high == low:
            continue
        step = (high - low) / 255.0
        error = np.round((x - low) / step) * step + low - x
        axes = tuple(range(x.ndim - 1))
        signal = np.sqrt(np.mean(x ** 2, axis=axes))
        noise = np.sqrt(np.mean(error ** 2, axis=axes))
        live = signal > 1e-6 * signal.max()
        if live.any():
            scores[name] = float((noise[live] / signal[live]).max())
    return scores
