"""Where an artifact diverges: the original's every intermediate tensor against the
artifact's, paired by the TF names converters keep, each judged against its own scale and
the original's own noise floor; the first op (in the original's topological order) whose
output diverges while its inputs match is named.

Each exporter's `trace(path, feed)` returns the artifact's intermediate tensors by its own
names: TFLite's preserved tensors (a fused op is named by every TF node it fuses, `a;b`,
and holds the last one's value), ONNX node outputs exposed as graph outputs (tf2onnx names
them `node:0`; channels-first ones are paired by transposing), a GraphDef's tensors.
Written here because no converter or runtime compares a TF original with its artifacts
op by op (Polygraphy and the TFLite QuantizationDebugger each cover one format).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tfopt.errors import TraceUnavailable
from tfopt.graph import (
    FORWARDING_OPS,
    NOT_TRACED,
    consumers,
    graph_tensors,
    is_control,
    node_name,
    tensor_name,
    topological_order,
)
from tfopt.model import Model, Spilled
from tfopt.verification.checks import ABSOLUTE_FLOOR, NOISE_FACTOR, SCALE_RTOL, one_ulp_up

MAX_CHART = 400  # per-op points kept for the report's chart
# an intermediate diverges when its error passes this many times its tolerance: healthy
# artifacts reach 1.2 (TFLite's Sigmoid approximation on EfficientNet), a changed weight
# thousands; a failing artifact with none that far is judged at 1
CLEAR_DIVERGENCE = 10.0


@dataclass
class Tracer:
    """The original's side, computed once per run: its intermediate tensors on the first
    verification feed, and how far each moves when the inputs move by one ulp."""

    model: Model | Spilled  # the optimized graph, read back only when a trace needs it
    feed: dict
    compute: str = "float32"
    # the frozen graph before tfopt's passes: fold_scale_shift keeps a conv's name while
    # scaling its output, so another tool's artifact matches this one's tensor instead
    unoptimized: Model | Spilled | None = None
    _reference: dict[str, np.ndarray] | None = field(default=None, repr=False)
    _floor: dict[str, float] = field(default_factory=dict, repr=False)
    _alternates: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def reference(self) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        if self._reference is None:
            self._reference, self._floor = self._tensors(self.model.load())
            if self.unoptimized is not None:
                before, _ = self._tensors(self.unoptimized.load(), floors=False)
                self._alternates = {name: value for name, value in before.items()
                                    if name in self._reference and
                                    value.shape == self._reference[name].shape and
                                    not np.array_equal(value, self._reference[name])}
        return self._reference, self._floor

    def _tensors(self, model: Model, floors: bool = True
                 ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        values = graph_tensors(model.graph_def, self.feed, model.weights)
        if not floors:
            return values, {}
        nudged = {k: one_ulp_up(v, self.compute) if v.dtype.kind == "f" else v
                  for k, v in self.feed.items()}
        moved = graph_tensors(model.graph_def, nudged, model.weights)
        return values, {name: _max_abs(moved[name], value)
                        for name, value in values.items() if name in moved}

    def divergence(self, artifact: dict[str, np.ndarray], min_cosine: float | None = None
                   ) -> dict:
        """The report's `divergence` of one artifact, from its traced tensors. min_cosine: a
        quantized artifact's budget, which judges each tensor by its cosine similarity
        (as its outputs are), and ranks its layers by quantization error (`worst`)."""
        reference, floor = self.reference()
        graph_def = self.model.load().graph_def
        order = {n.name: i for i, n in enumerate(topological_order(graph_def))}
        pairs = _pair(reference, artifact, order)

        def judge_against(name: str, expected: np.ndarray, value: np.ndarray
                          ) -> tuple[float, float]:
            if min_cosine is not None:  # judged as 1 - cosine against 1 - the budget's
                return 1.0 - _cosine(value, expected), 1.0 - min_cosine
            scale = float(np.max(np.abs(expected))) if expected.size else 0.0
            return _max_abs(value, expected), max(
                SCALE_RTOL * scale, NOISE_FACTOR * floor.get(name, 0.0), ABSOLUTE_FLOOR)

        def judge(name: str, value: np.ndarray) -> tuple[float, float]:
            found = judge_against(name, reference[name], value)
            if found[0] > found[1] and name in self._alternates:  # as before the passes
                other = judge_against(name, self._alternates[name], value)
                if other[0] / other[1] < found[0] / found[1]:
                    return other
            return found

        judged: dict[str, tuple[float, float]] = {}  # reference tensor -> (error, tolerance)
        readers = consumers(graph_def)
        for name, value in sorted(pairs.items(), key=lambda kv: order[node_name(kv[0])]):
            error, tolerance = judge(name, value)
            if error > tolerance:  # a fused op named after its first part (tf2onnx's Conv
                alias = _fused_successor(name, value, reference, readers, judge)  # + Add)
                if alias is not None and alias not in judged:
                    pairs[alias] = value
                    judged[alias] = judge(alias, value)
                    continue
            judged.setdefault(name, (error, tolerance))
        pairs = {name: pairs[name] for name in judged}
        nodes = {n.name: n for n in graph_def.node}
        chart = [[node_name(name), round(error / tolerance, 4)] for name, (error, tolerance)
                 in sorted(judged.items(), key=lambda item: order[node_name(item[0])])]
        found: dict = {"op": None, "op_type": None, "tensor": None, "max_abs_error": None,
                       "tolerance": None, "inputs_match": None, "compared": len(judged),
                       "paired": len(pairs), "traced": len(reference),
                       "chart": chart[:: max(1, len(chart) // MAX_CHART)][:MAX_CHART]}
        if min_cosine is not None:
            found["worst"] = _layer_errors(pairs, reference, nodes, judged)[:WORST]
        ranked = sorted(judged.items(), key=lambda item: order[node_name(item[0])])
        factor = CLEAR_DIVERGENCE if any(e > CLEAR_DIVERGENCE * t for _, (e, t) in ranked) \
            else 1.0
        for name, (error, tolerance) in ranked:
            if error <= factor * tolerance:
                continue
            op = _computing(node_name(name), nodes)  # an output's Identity: what it forwards
            inputs = _nearest_judged(op, nodes, judged)
            quantized = min_cosine is not None  # said as the tensor's error, not 1 - cosine
            found.update(op=op, op_type=nodes[op].op, tensor=name,
                         max_abs_error=_max_abs(pairs[name], reference[name]) if quantized
                         else error, tolerance=None if quantized else tolerance,
                         inputs_match=all(judged[i][0] <= judged[i][1] for i in inputs))
            break
        return found


def message(divergence: dict | None) -> str | None:
    """The failure message's clause naming the first divergent op, if one was found."""
    if not divergence or not divergence.get("op"):
        return None
    inputs = "its inputs match" if divergence["inputs_match"] else \
        "its inputs already differ"
    tolerance = "" if divergence["tolerance"] is None else \
        f" vs tolerance {divergence['tolerance']:.0e}"
    return (f"first divergence: op '{divergence['op']}' ({divergence['op_type']}), max abs "
            f"error {divergence['max_abs_error']:.2e}{tolerance}; {inputs}")


def traced(run_trace: Callable[[], dict[str, np.ndarray]], tracer: Tracer,
           min_cosine: float | None = None) -> dict:
    """An artifact's divergence, or why it has none (an error is said, not raised)."""
    try:
        return tracer.divergence(run_trace(), min_cosine)
    except TraceUnavailable as exc:
        return {"op": None, "error": str(exc)}
    except Exception as exc:  # a runtime refusing a model with every tensor exposed
        return {"op": None, "error": f"cannot trace: {str(exc).splitlines()[0][:300]}"}


def _pair(reference: dict[str, np.ndarray], artifact: dict[str, np.ndarray],
          order: dict[str, int]) -> dict[str, np.ndarray]:
    """Reference tensor -> the artifact's value of it, laid out as the reference's. Names
    match whole or as the reference's `/`-suffix (tfopt's ONNX drops the common scope);
    a fused tensor `a;b;c` stands for the part latest in the original's order."""
    by_suffix: dict[str, list[str]] = {}
    for name in reference:
        parts = name.split("/")
        for i in range(len(parts)):
            by_suffix.setdefault("/".join(parts[i:]), []).append(name)
    pairs: dict[str, np.ndarray] = {}
    for name, value in artifact.items():
        value = np.asarray(value)
        known = []
        for part in name.split(";"):
            candidates = [c for c in by_suffix.get(tensor_name(part), ())
                          if _layouts(value, reference[c].shape)]
            if len(candidates) == 1:
                known.append(candidates[0])
        if not known:
            continue
        target = max(known, key=lambda p: order.get(node_name(p), -1))
        if target not in pairs:  # a shape that fits both layouts (24x24x24): the closer
            pairs[target] = min(_layouts(value, reference[target].shape),
                                key=lambda v: _max_abs(v, reference[target]))
    return pairs


def _layouts(value: np.ndarray, shape: tuple) -> list[np.ndarray]:
    """value in the reference's layout: as it is, and channels-first moved last, those of
    the reference's shape."""
    found = [value] if value.shape == shape else []
    if value.ndim >= 3:
        moved = np.moveaxis(value, 1, -1)
        if moved.shape == shape:
            found.append(moved)
    return found


def _fused_successor(name: str, value: np.ndarray, reference: dict, readers: dict,
                     judge: Callable) -> str | None:
    """The tensor a mismatching artifact value really holds when a converter fused the op
    with the element-wise ops after it and kept the first op's name: the nearest of the
    next few single-reader successors whose reference it matches."""
    current = node_name(name)
    for _ in range(4):
        following = [r for r in readers.get(current, ()) if r.op not in NOT_TRACED]
        if len(following) != 1:
            return None
        current = following[0].name
        candidate = f"{current}:0"
        if candidate in reference and reference[candidate].shape == value.shape:
            error, tolerance = judge(candidate, value)
            if error <= tolerance:
                return candidate
    return None


def _computing(op: str, nodes: dict) -> str:
    """The op whose value an Identity chain forwards (the op itself otherwise)."""
    while nodes[op].op in FORWARDING_OPS and nodes[op].input and \
            node_name(nodes[op].input[0]) in nodes:
        op = node_name(nodes[op].input[0])
    return op


def _nearest_judged(op: str, nodes: dict, judged: dict) -> list[str]:
    """The judged tensors nearest above an op's data inputs (through unpaired nodes)."""
    found, seen = [], set()
    frontier = [r for r in nodes[op].input if not is_control(r)]
    while frontier:
        ref = tensor_name(frontier.pop())
        if ref in seen:
            continue
        seen.add(ref)
        if ref in judged:
            found.append(ref)
        elif node_name(ref) in nodes and len(seen) < 10_000:
            frontier += [r for r in nodes[node_name(ref)].input if not is_control(r)]
    return found


WORST = 10  # layers listed by quantization error


def _layer_errors(pairs: dict, reference: dict, nodes: dict, judged: dict) -> list[dict]:
    """The ops whose outputs a quantized artifact moves, worst first: RMS error over the
    tensor's RMS (the per-layer quantization error, inherited included), its cosine
    similarity, and the error the op adds: its worst channel's relative error over its
    nearest compared inputs' (a layer with one huge channel wipes out the others, which
    its RMS error hides)."""
    relative, channel = {}, {}
    for name, value in pairs.items():
        expected = reference[name].astype(np.float64)
        signal = float(np.sqrt(np.mean(expected ** 2))) if expected.size else 0.0
        if signal > ABSOLUTE_FLOOR:
            noise = value.astype(np.float64) - expected
            relative[name] = float(np.sqrt(np.mean(noise ** 2))) / signal
            channel[name] = _worst_channel(expected, noise)
    rows = []
    for name, error in relative.items():
        op = _computing(node_name(name), nodes)
        inherited = max((channel.get(i, 0.0) for i in _nearest_judged(op, nodes, judged)),
                        default=0.0)
        rows.append({"op": op, "op_type": nodes[op].op, "relative_error": round(error, 6),
                     "cosine": round(_cosine(pairs[name], reference[name]), 6),
                     "added_error": round(max(channel[name] - inherited, 0.0), 6)})
    return sorted(rows, key=lambda r: -r["relative_error"])


def _worst_channel(expected: np.ndarray, noise: np.ndarray) -> float:
    """The largest RMS error over RMS value among a tensor's live channels (its last axis)."""
    if expected.ndim < 2:
        expected, noise = expected.reshape(1, -1), noise.reshape(1, -1)
    axes = tuple(range(expected.ndim - 1))
    signal = np.sqrt(np.mean(expected ** 2, axis=axes))
    error = np.sqrt(np.mean(noise ** 2, axis=axes))
    live = signal > 1e-6 * signal.max()
    return float((error[live] / signal[live]).max()) if live.any() else 0.0


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / norm) if norm else (1.0 if not x.any() and not y.any() else 0.0)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape or not a.size:
        return 0.0 if a.shape == b.shape else float("inf")
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return float(np.max(np.where(same, 0.0, diff)))
