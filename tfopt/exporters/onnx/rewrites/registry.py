"""The registry of ONNX rewrites (by name, with the opsets they apply to, after OnnxSlim's
`@register_fusion_pattern`) and the driver that runs a list of them.

A rewrite is `(proto, log) -> proto`: it may change the proto it is handed (the driver
gives it a copy) and reports what it changed and what it skipped, with the reason, through
`log`, as the TF passes do. The driver keeps a result only if it passes the full
onnx.checker (shape inference included); a failing step is reported, never fatal.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tfopt.errors import first_line
from tfopt.exporters.onnx.graph import opset
from tfopt.logs import native_stderr_silenced
from tfopt.passes.base import PassLog

RewriteFn = Callable[[Any, PassLog], Any]


@dataclass(frozen=True)
class OnnxRewrite:
    name: str
    fn: RewriteFn
    min_opset: int = 1
    max_opset: int | None = None

    def applies(self, version: int) -> bool:
        return self.min_opset <= version and (self.max_opset is None
                                              or version <= self.max_opset)


REWRITES: dict[str, OnnxRewrite] = {}


def register_rewrite(name: str, min_opset: int = 1, max_opset: int | None = None
                     ) -> Callable[[RewriteFn], RewriteFn]:
    def add(fn: RewriteFn) -> RewriteFn:
        if name in REWRITES:
            raise ValueError(f"ONNX rewrite {name} registered twice")
        REWRITES[name] = OnnxRewrite(name, fn, min_opset, max_opset)
        return fn
    return add


def run_rewrites(proto: Any, names: list[str] | tuple[str, ...]) -> tuple[Any, list[dict]]:
    """Run the named rewrites in turn; returns the last good model and one step per rewrite
    (nodes after it, its changes and skips, or its error)."""
    import onnx

    steps = []
    for name in names:
        rewrite = REWRITES[name]
        log = PassLog()
        version = opset(proto)
        if not rewrite.applies(version):
            log.skip("*", f"opset {version} is outside {rewrite.min_opset}.."
                          f"{rewrite.max_opset or ''}")
            steps.append(_step(name, proto, log))
            continue
        source = onnx.ModelProto()
        source.CopyFrom(proto)
        try:
            with contextlib.redirect_stdout(io.StringIO()), native_stderr_silenced():
                candidate = rewrite.fn(source, log)
            onnx.checker.check_model(candidate, full_check=True)
        except Exception as exc:  # the optimizers raise anything; keep the last good model
            steps.append({"step": name, "error": first_line(exc)})
            continue
        proto = candidate
        steps.append(_step(name, proto, log))
    return proto, steps


def _step(name: str, proto: Any, log: PassLog) -> dict:
    return {"step": name, "nodes": len(proto.graph.node), "changes": log.changes,
            "skipped": log.skipped}


