"""What a run found and did, as types every stage fills in: the source (loaders), each
pass (passes), each artifact and its parity (verification), and the whole run. report.json
and the printed summary come from FreezeResult."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from tfopt.errors import EXIT_OK, EXIT_PARITY, EXIT_TARGET_FAILED
from tfopt.model import TensorSpec
from tfopt.modes import Budget

# 2: tfopt 0.2 (security, verification, sha256, parity rule and reason); 1: tfopt 0.1
SCHEMA_VERSION = 2


@dataclass
class SourceInfo:
    path: str
    format: str
    signature: str
    nodes: int
    ops: dict[str, int]
    variables: int
    variable_bytes: int
    optimizer_variables: int = 0
    optimizer_variable_bytes: int = 0
    reference: str = "the original model"  # what the artifacts are compared against

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PassReport:
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    changes: list[dict]
    skipped: list[dict]
    removed: dict[str, int]
    target: str | None = None  # set for an exporter's own preparation passes

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Parity:
    max_abs_err: float
    max_rel_err: float
    passed: bool
    samples: int
    atol: float | None  # None: the scale-aware rule
    rtol: float | None
    outputs: dict[str, dict] = field(default_factory=dict)  # per output: errors, passed, reason
    mean_abs_err: float | None = None
    cosine: float | None = None  # the lowest over outputs
    top1_agreement: float | None = None  # the lowest over class-score outputs
    accuracy: float | None = None  # top-1 against --eval labels
    budget: Budget | None = None  # set for quantized artifacts: pass means within it
    rule: str = "scale"  # "scale", "elementwise" (--atol/--rtol) or "budget" (quantized)
    reason: str | None = None  # the first criterion that failed, with values and the flag

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["budget"] = self.budget.to_dict() if self.budget else None
        return out


@dataclass
class GraphSummary:
    nodes: int
    ops: dict[str, int]
    constant_bytes: int
    external_weight_bytes: int = 0  # variables kept out of the graph (--large-weight-bytes)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


WRITTEN = ("ok", "differs")  # artifact statuses whose file is in the output


@dataclass
class ArtifactReport:
    format: str
    # "ok"; "differs": written and runs, but its outputs failed parity (exit 4); "failed";
    # "skipped" (a default target that cannot hold the model)
    status: str
    path: str | None = None
    precision: str = "fp32"
    bytes: int | None = None
    nodes: int | None = None
    ops: dict[str, int] = field(default_factory=dict)
    fallback: str | None = None
    parity: Parity | None = None
    seconds: float = 0.0
    error: str | None = None
    attempts: list[dict] = field(default_factory=list)
    blocking_ops: list[str] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    verify_seconds: float | None = None  # loading the artifact and running the samples
    float_layers: list[str] = field(default_factory=list)  # kept float by a quantized export
    note: str | None = None
    auto: dict | None = None  # --quantize auto: every candidate tried, and the choice
    recurrent: list[dict] = field(default_factory=list)  # how each recurrent layer converted
    sha256: str | None = None  # of the file, or of a directory's files and their names
    # the batch sizes verified ({"verified": [1, 4]}), and why only 1 ("limit") if so
    batch: dict | None = None
    # the input shapes verified: the first feed's, and a second size of unknown dims
    # ({"verified": [{"image": [1, 32, 32, 3]}, {"image": [1, 29, 37, 3]}]}), and why not
    shapes: dict | None = None
    # where it diverges from the original (divergence.py): the first divergent op, or why none
    divergence: dict | None = None

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["parity"] = self.parity.to_dict() if self.parity else None
        return out


@dataclass
class FreezeResult:
    """Everything a run did. `exit_code` is the CLI's exit code for it."""

    tfopt_version: str
    seconds: float
    out_dir: str
    source: SourceInfo
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    removed: dict[str, int]
    passes: list[PassReport]
    frozen: GraphSummary
    artifacts: list[ArtifactReport]
    timings: dict[str, float] = field(default_factory=dict)  # load, passes, reference
    reference_accuracy: float | None = None  # the original's top-1 on --eval
    security: dict = field(default_factory=dict)  # side-effect ops found, and if allowed
    verification: dict = field(default_factory=dict)  # inputs, rule, the original's noise
    resources: dict = field(default_factory=dict)  # seconds and peak RSS per stage
    versions: dict = field(default_factory=dict)  # of the libraries that shaped the artifacts

    @property
    def conversion_seconds(self) -> float:
        """Wall time without verification (the reference run and every artifact's run)."""
        return round(self.seconds - self.timings.get("reference", 0.0)
                     - sum(a.verify_seconds or 0.0 for a in self.artifacts), 2)

    @property
    def failed_targets(self) -> list[str]:
        return [a.format for a in self.artifacts if a.status == "failed"]

    @property
    def parity_failures(self) -> list[str]:
        return [a.format for a in self.artifacts if a.status == "differs"]

    @property
    def exit_code(self) -> int:
        if self.failed_targets:
            return EXIT_TARGET_FAILED
        return EXIT_PARITY if self.parity_failures else EXIT_OK

    def artifact(self, fmt: str) -> ArtifactReport:
        return next(a for a in self.artifacts if a.format == fmt)

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION, "versions": self.versions,
            "tfopt_version": self.tfopt_version, "seconds": self.seconds, "out_dir": self.out_dir,
            "exit_code": self.exit_code, "source": self.source.to_dict(),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "removed": self.removed, "passes": [p.to_dict() for p in self.passes],
            "frozen": self.frozen.to_dict(), "artifacts": [a.to_dict() for a in self.artifacts],
            "timings": dict(self.timings, conversion=self.conversion_seconds),
            "reference_accuracy": self.reference_accuracy,
            "security": self.security, "verification": self.verification,
            "resources": self.resources}

    def to_json(self) -> str:
        return json.dumps(_strict(self.to_dict()), indent=2, default=str)

    def summary(self) -> str:
        """The human-readable table the CLI prints."""
        src = self.source
        lines = [
            f"tfopt {self.tfopt_version}: {src.path} ({src.format}, signature "
            f"'{src.signature}') -> {self.out_dir} in {self.seconds:.1f} s",
            f"  source  {src.nodes:>7} nodes  {src.variables} variables "
            f"({human_size(src.variable_bytes)}; optimizer state {src.optimizer_variables} "
            f"variables, {human_size(src.optimizer_variable_bytes)})",
            f"  frozen  {self.frozen.nodes:>7} nodes  "
            f"constants {human_size(self.frozen.constant_bytes)}",
            "  inputs  " + ", ".join(_spec(t) for t in self.inputs),
            "  outputs " + ", ".join(_spec(t) for t in self.outputs),
            "  removed " + (", ".join(f"{k} {v}" for k, v in self.removed.items() if v) or "none"),
            "",
            f"  {'pass':<20}{'nodes':>15}{'changes':>9}{'skipped':>9}{'seconds':>9}",
        ]
        for p in self.passes:
            lines.append(f"  {p.name:<20}{p.nodes_before:>7} ->{p.nodes_after:>5}"
                         f"{len(p.changes):>9}{len(p.skipped):>9}{p.seconds:>9.2f}")
        lines += ["", f"  {'target':<12}{'status':<8}{'precision':<14}{'bytes':>10}{'nodes':>7}"
                      f"{'max_abs_err':>13}{'parity':>8}  note"]
        for a in self.artifacts:
            parity = a.parity
            err = f"{parity.max_abs_err:.2e}" if parity else "-"
            verdict = ("pass" if parity.passed else "FAIL") if parity else "-"
            note = a.error or "; ".join(filter(None, [
                f"fallback {a.fallback}" if a.fallback else None, a.note]))
            lines.append(f"  {a.format:<12}{a.status:<8}{a.precision:<14}"
                         f"{human_size(a.bytes):>10}"
                         f"{a.nodes if a.nodes is not None else '-':>7}{err:>13}"
                         f"{verdict:>8}  {note}")
        return "\n".join(lines)


def _spec(t: TensorSpec) -> str:
    shape = "?" if t.shape is None else "[" + ",".join("?" if d is None else str(d)
                                                        for d in t.shape) + "]"
    return f"{t.name} {t.dtype}{shape}"


def human_size(n: float | None) -> str:
    """Bytes as B, KB, MB or GB; "-" for none."""
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _strict(value: Any) -> Any:
    # JSON has no Infinity or NaN; write them as strings
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value
