"""The quantization modes, one row each: what `--quantize` offers, what each gives and how
far it may drift (README: Quantization). Which targets take a mode is each exporter's
`MODES`; how a target builds it is its exporter's business."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """How far a quantized artifact may drift from the fp32 original."""

    min_cosine: float  # per output, cosine similarity over all samples
    min_agreement: float  # top-1 agreement, for outputs shaped like class scores [N, C]
    max_drop: float = 0.01  # top-1 accuracy drop against the original, with --eval labels

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Mode:
    name: str  # the --quantize value
    precision: str  # the artifact's, in report.json
    calibrated: bool  # needs --calibration (int8 of a quantization-aware model excepted)
    budget: Budget | None  # the default verification budget; None: the fp32 rule
    bytes_per_param: float  # what a weight costs, for the report's size estimate
    integer: bool  # integer weights: an ONNX model's names outweigh them


MODES = {mode.name: mode for mode in (
    Mode("none", "fp32", False, None, 4.0, False),
    Mode("fp16", "fp16", False, Budget(0.999, 0.99), 2.0, False),
    Mode("dynamic", "dynamic-int8", False, Budget(0.99, 0.95), 1.0, True),
    Mode("int8", "int8", True, Budget(0.98, 0.95), 1.0, True),
    Mode("int16x8", "int16x8", True, Budget(0.995, 0.98), 1.0, True),
)}
BY_PRECISION = {mode.precision: mode for mode in MODES.values()}
AUTO_ORDER = ("int8", "int16x8", "dynamic", "fp16")  # what auto tries, most compressed first
