"""The original's side of verification: the inputs every artifact runs on (read from data
or drawn from the optimized graph's domain), the original's outputs on them, its noise
floor, a batch and a second input size where the model allows, and the Check they make."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tfopt.errors import InputError, UsageError, first_line
from tfopt.graph import compute_precision, fake_quant_nodes, fake_quant_steps, non_finite_constants
from tfopt.loaders import Loaded
from tfopt.model import SECOND_SIZES, Model, Spilled
from tfopt.modes import Budget
from tfopt.options import FreezeOptions, calibration_needed
from tfopt.reporting.resources import Stages
from tfopt.verification.checks import (
    BUDGETS,
    MANTISSA_BITS,
    Check,
    feed_shapes,
    noise_floor,
    top1_accuracy,
)
from tfopt.verification.data import read_feeds
from tfopt.verification.divergence import Tracer
from tfopt.verification.inputs import draw, input_domains

VERIFY_SAMPLES = 64  # calibration samples that quantized artifacts are checked on


@dataclass
class Data:
    """What the user's files give: verification feeds (None: drawn later), their labels, and
    calibration feeds; and the source's fake-quant op count, which decides whether int8
    needs them."""

    feeds: list[dict] | None
    labels: np.ndarray | None
    calibration: list[dict] | None
    fake_quants: int


def read_data(model: Model, opts: FreezeOptions) -> Data:
    """--calibration, --eval and --data, read and checked against the model's inputs."""
    fake_quants = len(fake_quant_nodes(model.graph_def))
    if opts.quantize == "int8" and opts.calibration is None and not fake_quants:
        raise UsageError(calibration_needed(opts.quantize))
    calibration = None if opts.calibration is None else read_feeds(
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
    elif opts.quantize != "none" and calibration is not None:
        feeds = calibration[:VERIFY_SAMPLES]
    return Data(feeds, labels, calibration, fake_quants)


def reference_check(loaded: Loaded, model: Model, kept: Model | Spilled,
                    unoptimized: Model | Spilled, data: Data, opts: FreezeOptions,
                    stages: Stages) -> tuple[Check, dict]:
    """The original run on the verification inputs (drawn from the optimized graph, whose
    constants are folded, unless given): the Check every artifact passes, and the report's
    `verification`. kept: the optimized model as the run keeps it, where a trace reads it;
    unoptimized: the graph before tfopt's passes, which the trace also compares with (the
    passes rename nothing but change what some names hold)."""
    drawn, feeds = None, data.feeds
    if feeds is None:
        domains = input_domains(model, dict(opts.input_shapes))
        feeds = draw(domains, model.inputs, opts.samples)
        drawn = {name: domain.to_dict() for name, domain in domains.items()}
    with stages(f"the original on {len(feeds)} verification inputs"):
        try:
            expected = [loaded.reference(feed) for feed in feeds]
        except Exception as exc:  # TF raises many types for a feed the model rejects
            raise InputError(f"the original model rejects the verification inputs: "
                             f"{first_line(exc)}; check --input-shape or --data") from exc
        _check_finite(model, expected)
        compute = compute_precision(model.graph_def)
        floor = noise_floor(loaded.reference, feeds, expected, compute=compute)
        batched = _batched(model, feeds) if data.labels is None else None
        batched_expected = None if batched is None else _batch_reference(loaded, batched)
        reshaped, reshaped_expected, passed_over = (None, None, []) if drawn is None else \
            _other_size(model, loaded, dict(opts.input_shapes))
    check = Check(feeds, expected, opts.atol, opts.rtol, data.labels,
                  top1_accuracy(expected, data.labels) if data.labels is not None else None,
                  _budgets(opts.max_drop, opts.min_cosine, opts.min_agreement), floor,
                  batched if batched_expected is not None else None, batched_expected,
                  reshaped, reshaped_expected,
                  Tracer(kept, feeds[0], compute, unoptimized), opts.trace,
                  fake_quant_steps(model.graph_def, [o.name for o in model.outputs]))
    verification = _verification(drawn, floor, expected, opts, check.batch_size, compute)
    verification["shapes"] = [feed_shapes(feeds[0])] + (
        [feed_shapes(check.reshaped)] if check.reshaped is not None else [])
    verification["notes"] += passed_over
    if data.fake_quants:
        verification["notes"].append(
            f"the model is quantization-aware ({data.fake_quants} fake-quant ops): an output on "
            "a fake-quant grid may differ by one step of it, and --quantize int8 takes the "
            "model's own ranges (calibration data, if given, only for ops it left float)")
    return check, verification


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
