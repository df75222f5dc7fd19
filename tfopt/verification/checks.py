"""Compare an artifact's outputs with the original model's on the same feeds."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfopt.modes import MODES, Budget
from tfopt.results import Parity

# the fp32 rule (README: Verification)
SCALE_RTOL = 1e-4  # max abs error over the output's largest magnitude
MIN_COSINE = 0.99999
NOISE_FACTOR = 10  # x the original's own output change under a one-ulp input change
ABSOLUTE_FLOOR = 1e-6  # below this an error is noise whatever the scale
ELEMENTWISE_ATOL, ELEMENTWISE_RTOL = 1e-4, 1e-3  # with --atol/--rtol, the other's default

# defaults per precision (the modes' table); flags override them
BUDGETS = {mode.precision: mode.budget for mode in MODES.values() if mode.budget is not None}


def _errors(expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> dict:
    """One sample of one output: errors, the element-wise verdict and the output's scale."""
    if expected.shape != actual.shape:
        return {"passed": False, "reason": f"shape {list(actual.shape)} != {list(expected.shape)}",
                "max_abs_err": float("inf"), "max_rel_err": float("inf"), "scale": 0.0}
    if not (np.issubdtype(expected.dtype, np.number) or expected.dtype == np.bool_):
        same = bool(np.array_equal(expected, actual))
        return {"passed": same, "max_abs_err": 0.0 if same else float("inf"),
                "max_rel_err": 0.0 if same else float("inf"), "scale": 0.0}
    e, a = expected.astype(np.float64), actual.astype(np.float64)
    diff = np.abs(a - e)
    if diff.size == 0:
        return {"passed": True, "max_abs_err": 0.0, "max_rel_err": 0.0, "scale": 0.0}
    finite = np.isfinite(a) == np.isfinite(e)
    rel = diff / np.maximum(np.abs(e), 1e-6)
    result: dict = {
        "passed": bool(finite.all() and np.all((diff <= atol + rtol * np.abs(e)) | (a == e))),
        "max_abs_err": float(np.nanmax(np.where(a == e, 0.0, diff))),
        "max_rel_err": float(np.nanmax(np.where(a == e, 0.0, rel))),
        "scale": float(np.nanmax(np.abs(np.where(np.isfinite(e), e, 0.0))))}
    if not finite.all():
        result["reason"] = "NaN or Inf where the original is finite, or the reverse"
    return result


def is_class_scores(value: np.ndarray) -> bool:
    return value.ndim == 2 and value.shape[1] >= 2 and value.dtype.kind == "f"


def top1_accuracy(outputs: list[dict], labels: np.ndarray) -> float | None:
    """Accuracy of the first class-score output against integer labels."""
    stacked = _stack(outputs)
    scores = next((v for v in stacked.values() if is_class_scores(v)), None)
    if scores is None or len(scores) != len(labels):
        return None
    return float(np.mean(scores.argmax(axis=1) == np.asarray(labels).reshape(-1)))


def _stack(samples: list[dict]) -> dict[str, np.ndarray]:
    """Each output's samples joined along the batch axis; a scalar output, one value each;
    flat when a sample at another input size gave it another shape."""
    stacked = {}
    for name in samples[0]:
        parts = [np.atleast_1d(np.asarray(s[name])) for s in samples]
        if len({part.shape[1:] for part in parts}) > 1:
            parts = [part.ravel() for part in parts]
        stacked[name] = np.concatenate(parts)
    return stacked


def quality(expected: list[dict], actual: list[dict]) -> dict[str, dict]:
    """Per output: mean abs error, cosine similarity and (class scores) top-1 agreement."""
    want, got = _stack(expected), _stack(actual)
    stats = {}
    for name, e in want.items():
        if name not in got or got[name].shape != e.shape or e.dtype.kind != "f":
            continue
        a = got[name].astype(np.float64)
        e64 = e.astype(np.float64)
        norm = np.linalg.norm(e64) * np.linalg.norm(a)
        entry = {"mean_abs_err": float(np.abs(a - e64).mean()) if e.size else 0.0,
                 "cosine": float((e64.ravel() @ a.ravel()) / norm) if norm else
                 float(np.allclose(a, e64))}
        if is_class_scores(e):
            entry["top1_agreement"] = float(np.mean(e.argmax(axis=1) == a.argmax(axis=1)))
        stats[name] = entry
    return stats


def compare(expected: list[dict], actual: list[dict], atol: float | None = None,
            rtol: float | None = None, budget: Budget | None = None,
            labels: np.ndarray | None = None, reference_accuracy: float | None = None,
            noise: dict[str, float] | None = None, steps: dict[str, float] | None = None
            ) -> Parity:
    """Per-output errors over all samples, the worst of them, and the verdict.

    fp32 (no budget) is judged by the scale-aware rule unless atol or rtol is given: an
    output passes when its max abs error is within SCALE_RTOL of its largest magnitude (or
    NOISE_FACTOR x the original's own noise floor, or one step of the fake-quant grid it
    ends on, if larger) and its cosine similarity is at least MIN_COSINE. With atol/rtol
    every element must be within atol + rtol*|expected|.
    A quantized artifact (budget) passes when cosine, top-1 agreement and accuracy drop are
    within the budget.
    """
    elementwise = atol is not None or rtol is not None
    atol = ELEMENTWISE_ATOL if atol is None else atol
    rtol = ELEMENTWISE_RTOL if rtol is None else rtol
    outputs: dict[str, dict] = {}
    for want, got in zip(expected, actual):
        for name, value in want.items():
            if name not in got:
                result = {"passed": False, "reason": "output missing", "scale": 0.0,
                          "max_abs_err": float("inf"), "max_rel_err": float("inf")}
            else:
                result = _errors(np.asarray(value), np.asarray(got[name]), atol, rtol)
            seen = outputs.setdefault(name, {"passed": True, "max_abs_err": 0.0,
                                             "max_rel_err": 0.0, "scale": 0.0})
            seen["passed"] &= result["passed"]
            for key in ("max_abs_err", "max_rel_err", "scale"):
                seen[key] = max(seen[key], result[key])
            if "reason" in result:
                seen["reason"] = result["reason"]
    rule = "budget" if budget is not None else "elementwise" if elementwise else "scale"
    parity = Parity(max_abs_err=max((o["max_abs_err"] for o in outputs.values()), default=0.0),
                    max_rel_err=max((o["max_rel_err"] for o in outputs.values()), default=0.0),
                    passed=True, samples=len(expected), atol=atol if elementwise else None,
                    rtol=rtol if elementwise else None, outputs=outputs, budget=budget,
                    rule=rule)
    stats = quality(expected, actual) if expected else {}
    for name, entry in stats.items():
        outputs[name].update(entry)
    values = list(stats.values())
    if values:
        parity.mean_abs_err = max(v["mean_abs_err"] for v in values)
        parity.cosine = min(v["cosine"] for v in values)
        agreements = [v["top1_agreement"] for v in values if "top1_agreement" in v]
        parity.top1_agreement = min(agreements) if agreements else None
    if labels is not None:
        parity.accuracy = top1_accuracy(actual, labels)
    reasons = [f"output '{name}': {o['reason']}" for name, o in outputs.items()
               if "reason" in o]
    if budget is not None:
        reasons += _budget_reasons(parity, budget, reference_accuracy, bool(values))
    elif rule == "scale":
        reasons += _scale_reasons(outputs, noise or {}, steps or {})
    else:
        reasons += [f"output '{name}': max abs error {o['max_abs_err']:.2e} exceeds --atol "
                    f"{atol:g} + --rtol {rtol:g} x |expected| at some element; change "
                    "--atol/--rtol, or give neither for the scale-aware rule"
                    for name, o in outputs.items() if not o["passed"] and "reason" not in o]
    parity.passed = not reasons
    parity.reason = reasons[0] if reasons else None
    return parity


def _scale_reasons(outputs: dict[str, dict], noise: dict[str, float],
                   steps: dict[str, float]) -> list[str]:
    """Judge each output against its own scale and the original's noise floor. An output on a
    fake-quant grid may land one step over: a rounding there turns any difference in the
    float arithmetic before it (another summation order) into a whole step."""
    reasons = []
    for name, out in outputs.items():
        if "reason" in out:
            continue
        if "cosine" not in out:  # integers, booleans, strings: exact
            out["passed"] = out["max_abs_err"] == 0.0
            if not out["passed"]:
                reasons.append(f"output '{name}': values differ from the original's "
                               f"(max abs error {out['max_abs_err']:.3g}); they must be equal")
            continue
        # a step as measured in float32 outputs: their rounding makes it a hair wider
        floor, step = noise.get(name, 0.0), steps.get(name, 0.0) * (1 + 1e-3)
        tolerance = max(SCALE_RTOL * out["scale"], NOISE_FACTOR * floor, step, ABSOLUTE_FLOOR)
        out.update(tolerance=tolerance, noise_floor=floor)
        if step:
            out["grid_step"] = step
        reason = None
        # the original's own noise, or its own resolution
        noisy = max(NOISE_FACTOR * floor, step) >= SCALE_RTOL * out["scale"]
        if out["max_abs_err"] > tolerance:
            basis = "one step of the fake-quant grid it ends on" if step == tolerance else \
                f"{NOISE_FACTOR} x the original's noise floor {floor:.2e}" if noisy else \
                f"{SCALE_RTOL:g} x the output's scale {out['scale']:.3g}"
            reason = (f"max abs error {out['max_abs_err']:.2e} is above the tolerance "
                      f"{tolerance:.2e} ({basis})")
        elif out["cosine"] < MIN_COSINE and out["scale"] > ABSOLUTE_FLOOR and not noisy:
            reason = f"cosine similarity {out['cosine']:.6f} is below {MIN_COSINE}"
        out["passed"] = reason is None
        if reason:
            reasons.append(f"output '{name}': {reason}; pass --atol/--rtol for an "
                           "element-wise rule")
    return reasons


def _budget_reasons(parity: Parity, budget: Budget, reference_accuracy: float | None,
                    measured: bool) -> list[str]:
    if not measured or parity.cosine is None:
        return ["no floating-point output to measure the budget on"]
    for out in parity.outputs.values():  # per output, the budget decides too
        if "cosine" in out:
            out["passed"] = out["cosine"] >= budget.min_cosine and \
                out.get("top1_agreement", 1.0) >= budget.min_agreement
    reasons = []
    if parity.cosine < budget.min_cosine:
        reasons.append(f"cosine similarity {parity.cosine:.4f} is below the budget "
                       f"{budget.min_cosine} (--min-cosine)")
    if parity.top1_agreement is not None and parity.top1_agreement < budget.min_agreement:
        reasons.append(f"top-1 agreement {parity.top1_agreement:.3f} is below the budget "
                       f"{budget.min_agreement} (--min-agreement)")
    if parity.accuracy is not None and reference_accuracy is not None \
            and reference_accuracy - parity.accuracy > budget.max_drop:
        reasons.append(f"top-1 accuracy drops {reference_accuracy - parity.accuracy:.3f} "
                       f"(from {reference_accuracy:.3f}), more than {budget.max_drop} "
                       "(--max-drop)")
    return reasons


def widened(run: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """A model run whose bfloat16 outputs come back as float32, which numpy computes with
    (a bfloat16 array is not a numpy number)."""
    def run_widened(feed: dict) -> dict:
        return {name: value.astype(np.float32)
                if isinstance(value, np.ndarray) and value.dtype.name == "bfloat16" else value
                for name, value in run(feed).items()}
    return run_widened


def noise_floor(reference: Callable[[dict], dict], feeds: list[dict],
                expected: list[dict], samples: int = 3, compute: str = "float32"
                ) -> dict[str, float]:
    """How far the original's own outputs move when every float input moves by one ulp of
    the precision the model computes in (float16 under Keras' mixed_float16: a float32 ulp
    vanishes in its first cast), or, without float inputs, between two runs: the resolution
    below which no artifact can be judged."""
    floor: dict[str, float] = {}
    for feed, want in list(zip(feeds, expected))[:samples]:
        nudged = {k: one_ulp_up(v, compute)
                  if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
                  for k, v in feed.items()}
        moved = reference(nudged)
        for name, value in want.items():
            value = np.asarray(value)
            if value.dtype.kind != "f" or name not in moved:
                continue
            delta = np.abs(np.asarray(moved[name], np.float64) - value.astype(np.float64))
            delta = delta[np.isfinite(delta)]
            floor[name] = max(floor.get(name, 0.0), float(delta.max()) if delta.size else 0.0)
    return floor


MANTISSA_BITS = {"float16": 10, "bfloat16": 7}  # stored bits; float32 uses np.nextafter


def one_ulp_up(value: np.ndarray, compute: str) -> np.ndarray:
    """value moved up by one unit in the last place of the compute precision."""
    if compute not in MANTISSA_BITS:
        return np.nextafter(value, np.inf).astype(value.dtype)
    _, exponent = np.frexp(value.astype(np.float64))
    return (value + np.ldexp(1.0, exponent - 1 - MANTISSA_BITS[compute])).astype(value.dtype)


def feed_shapes(feed: dict) -> dict[str, list[int]]:
    """Each input's shape in a feed, as report.json lists verified shapes."""
    return {name: [int(d) for d in np.shape(value)] for name, value in feed.items()}


def batch_size(feed: dict) -> int:
    """The leading dimension of a feed's first input (1 for a scalar)."""
    return next((int(np.shape(v)[0]) for v in feed.values() if np.ndim(v)), 1)


@dataclass
class Check:
    """The verification every artifact of a run gets: the feeds, the original's outputs on
    them, and the tolerances (atol/rtol for fp32, a budget per quantized precision)."""

    feeds: list[dict]
    expected: list[dict]
    atol: float | None  # None (with rtol None): the scale-aware rule
    rtol: float | None
    labels: np.ndarray | None = None
    reference_accuracy: float | None = None
    budgets: dict[str, Budget] = field(default_factory=lambda: dict(BUDGETS))
    noise: dict[str, float] = field(default_factory=dict)  # the original's noise floor
    # the first samples stacked into one batch, and the original's outputs on it: every
    # artifact whose batch is dynamic is checked at that batch size too
    batched: dict | None = None
    batched_expected: dict | None = None
    # a feed at a second size of the inputs' unknown dims, and the original's outputs on it
    reshaped: dict | None = None
    reshaped_expected: dict | None = None
    tracer: Any = None  # divergence.Tracer: the original's intermediate tensors, for divergence
    trace_all: bool = False  # trace passing artifacts too (--trace)
    steps: dict[str, float] = field(default_factory=dict)  # outputs on a fake-quant grid

    @property
    def batch_size(self) -> int | None:
        return None if self.batched is None else batch_size(self.batched)

    def verdict(self, actual: list[dict], precision: str, batched_actual: dict | None = None,
                reshaped_actual: dict | None = None) -> Parity:
        budget = None if precision == "fp32" else self.budgets[precision]
        expected = self.expected
        if batched_actual is not None and self.batched_expected is not None:
            expected, actual = expected + [self.batched_expected], actual + [batched_actual]
        if reshaped_actual is not None and self.reshaped_expected is not None:
            expected, actual = expected + [self.reshaped_expected], actual + [reshaped_actual]
        parity = compare(expected, actual, self.atol, self.rtol, budget, self.labels,
                         self.reference_accuracy, self.noise, self.steps)
        parity.samples = len(self.expected)
        return parity
