"""Compare an artifact's outputs with the original model's on the same feeds."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Parity:
    max_abs_err: float
    max_rel_err: float
    passed: bool
    samples: int
    atol: float
    rtol: float
    outputs: dict[str, dict] = field(default_factory=dict)  # per output: errors, passed, reason

    def to_dict(self) -> dict:
        return dict(self.__dict__)


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


def compare(expected: list[dict], actual: list[dict], atol: float, rtol: float) -> Parity:
    """Per-output errors over all samples, and the worst of them."""
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
    return Parity(max_abs_err=max((o["max_abs_err"] for o in outputs.values()), default=0.0),
                  max_rel_err=max((o["max_rel_err"] for o in outputs.values()), default=0.0),
                  passed=all(o["passed"] for o in outputs.values()), samples=len(expected),
                  atol=atol, rtol=rtol, outputs=outputs)
