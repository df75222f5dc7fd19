"""Compare an artifact's outputs with the original model's on the same feeds."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Budget:
    """How far a quantized artifact may drift from the fp32 original."""

    min_cosine: float  # per output, cosine similarity over all samples
    min_agreement: float  # top-1 agreement, for outputs shaped like class scores [N, C]
    max_drop: float = 0.01  # top-1 accuracy drop against the original, with --eval labels

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# defaults per precision (README: Quantization); flags override them
BUDGETS = {"fp16": Budget(0.999, 0.99), "dynamic-int8": Budget(0.99, 0.95),
           "int8": Budget(0.98, 0.95), "int16x8": Budget(0.995, 0.98)}


@dataclass
class Parity:
    max_abs_err: float
    max_rel_err: float
    passed: bool
    samples: int
    atol: float
    rtol: float
    outputs: dict[str, dict] = field(default_factory=dict)  # per output: errors, passed, reason
    mean_abs_err: float | None = None
    cosine: float | None = None  # the lowest over outputs
    top1_agreement: float | None = None  # the lowest over class-score outputs
    accuracy: float | None = None  # top-1 against --eval labels
    budget: Budget | None = None  # set for quantized artifacts: pass means within it

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["budget"] = self.budget.to_dict() if self.budget else None
        return out


def _errors(expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> dict:
    if expected.shape != actual.shape:
        return {"passed": False, "reason": f"shape {list(actual.shape)} != {list(expected.shape)}",
                "max_abs_err": float("inf"), "max_rel_err": float("inf")}
    if not (np.issubdtype(expected.dtype, np.number) or expected.dtype == np.bool_):
        same = bool(np.array_equal(expected, actual))
        return {"passed": same, "max_abs_err": 0.0 if same else float("inf"),
                "max_rel_err": 0.0 if same else float("inf")}
    e, a = expected.astype(np.float64), actual.astype(np.float64)
    diff = np.abs(a - e)
    if diff.size == 0:
        return {"passed": True, "max_abs_err": 0.0, "max_rel_err": 0.0}
    finite = np.isfinite(a) == np.isfinite(e)
    rel = diff / np.maximum(np.abs(e), 1e-6)
    return {"passed": bool(finite.all() and np.all((diff <= atol + rtol * np.abs(e)) | (a == e))),
            "max_abs_err": float(np.nanmax(np.where(a == e, 0.0, diff))),
            "max_rel_err": float(np.nanmax(np.where(a == e, 0.0, rel)))}


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
    return {k: np.concatenate([np.asarray(s[k]) for s in samples]) for k in samples[0]}


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


def compare(expected: list[dict], actual: list[dict], atol: float, rtol: float,
            budget: Budget | None = None, labels: np.ndarray | None = None,
            reference_accuracy: float | None = None) -> Parity:
    """Per-output errors over all samples, and the worst of them.

    Without a budget an artifact passes when every element is within atol/rtol; with one
    (quantized artifacts) when cosine, top-1 agreement and accuracy drop are within it.
    """
    outputs: dict[str, dict] = {}
    for want, got in zip(expected, actual):
        for name, value in want.items():
            if name not in got:
                result = {"passed": False, "reason": "output missing",
                          "max_abs_err": float("inf"), "max_rel_err": float("inf")}
            else:
                result = _errors(np.asarray(value), np.asarray(got[name]), atol, rtol)
            seen = outputs.setdefault(name, {"passed": True, "max_abs_err": 0.0,
                                             "max_rel_err": 0.0})
            seen["passed"] &= result["passed"]
            seen["max_abs_err"] = max(seen["max_abs_err"], result["max_abs_err"])
            seen["max_rel_err"] = max(seen["max_rel_err"], result["max_rel_err"])
            if "reason" in result:
                seen["reason"] = result["reason"]
    parity = Parity(max_abs_err=max((o["max_abs_err"] for o in outputs.values()), default=0.0),
                    max_rel_err=max((o["max_rel_err"] for o in outputs.values()), default=0.0),
                    passed=all(o["passed"] for o in outputs.values()), samples=len(expected),
                    atol=atol, rtol=rtol, outputs=outputs, budget=budget)
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
    if budget is not None:
        shapes_ok = all("reason" not in o for o in outputs.values())
        parity.passed = shapes_ok and bool(values) and parity.cosine is not None \
            and parity.cosine >= budget.min_cosine and (
            parity.top1_agreement is None or parity.top1_agreement >= budget.min_agreement) and (
            parity.accuracy is None or reference_accuracy is None
            or reference_accuracy - parity.accuracy <= budget.max_drop)
    return parity


@dataclass
class Check:
    """The verification every artifact of a run gets: the feeds, the original's outputs on
    them, and the tolerances (atol/rtol for fp32, a budget per quantized precision)."""

    feeds: list[dict]
    expected: list[dict]
    atol: float
    rtol: float
    labels: np.ndarray | None = None
    reference_accuracy: float | None = None
    budgets: dict[str, Budget] = field(default_factory=lambda: dict(BUDGETS))

    def verdict(self, actual: list[dict], precision: str) -> Parity:
        budget = None if precision == "fp32" else self.budgets[precision]
        return compare(self.expected, actual, self.atol, self.rtol, budget, self.labels,
                       self.reference_accuracy)
