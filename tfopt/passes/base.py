"""Pass infrastructure: a registry of named `GraphDef -> GraphDef` passes and the pipeline runner.

A pass is a pure function `(graph_def, ctx, log) -> graph_def`. It reports what it changed
and what it skipped (with the reason) through `log`, and never mutates its input.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfopt.memory import older_objects_frozen, return_freed_memory
from tfopt.model import Model
from tfopt.results import PassReport


@dataclass(frozen=True)
class PassContext:
    inputs: tuple[str, ...]  # node names the pipeline must keep as they are
    outputs: tuple[str, ...]
    values: Mapping[str, np.ndarray] = field(default_factory=dict)  # placeholders to freeze
    weights: frozenset[str] = frozenset()  # placeholders that are external weights

    @property
    def protected(self) -> frozenset[str]:
        return frozenset(self.inputs) | frozenset(self.outputs) | self.weights


@dataclass
class PassLog:
    changes: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    removed: Counter = field(default_factory=Counter)  # category -> nodes removed

    def change(self, action: str, **details) -> None:
        self.changes.append({"action": action, **details})

    def skip(self, node: str, reason: str) -> None:
        self.skipped.append({"node": node, "reason": reason})


PassFn = Callable[[Any, PassContext, PassLog], Any]  # GraphDef in, GraphDef out
REGISTRY: dict[str, PassFn] = {}


def register(name: str) -> Callable[[PassFn], PassFn]:
    def add(fn: PassFn) -> PassFn:
        if name in REGISTRY:
            raise ValueError(f"pass {name} registered twice")
        REGISTRY[name] = fn
        return fn
    return add


def run_pipeline(model: Model, names: Sequence[str], values: Mapping[str, np.ndarray] | None = None
                 ) -> tuple[Model, list[PassReport]]:
    ctx = PassContext(tuple(t.name for t in model.inputs), tuple(t.name for t in model.outputs),
                      dict(values or {}), frozenset(model.weights))
    reports = []
    graph_def = model.graph_def
    with older_objects_frozen():
        for name in names:
            graph_def, report = run_rewrite(name, graph_def, ctx)
            reports.append(report)
            return_freed_memory()  # the graph before the pass, so passes do not stack up
    return model.with_graph(graph_def), reports


def run_rewrite(name: str, graph_def: Any, ctx: PassContext) -> tuple[Any, PassReport]:
    """One registered pass on a GraphDef, with its report."""
    log = PassLog()
    start, before = time.perf_counter(), len(graph_def.node)
    graph_def = REGISTRY[name](graph_def, ctx, log)
    return graph_def, PassReport(name, round(time.perf_counter() - start, 4), before,
                                 len(graph_def.node), log.changes, log.skipped,
                                 dict(log.removed))
