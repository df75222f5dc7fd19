"""What a model holds, without writing anything (`tfopt inspect SRC`).

It answers "what are my input and output names", which training-only ops and optimizer
state the source carries, and which ops each target cannot express.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from tfopt import compat
from tfopt.errors import TfoptError
from tfopt.options import FreezeOptions


def inspect(src: str | os.PathLike, options: FreezeOptions | None = None,
            **overrides: Any) -> dict:
    """A JSON-ready description of a model in any input format tfopt reads; `options` (or
    FreezeOptions fields as keywords) choose the signature, cuts and opset."""
    from dataclasses import replace

    from tfopt.categories import CATEGORIES, classify
    from tfopt.exporters import EXPORTERS, missing_extra, prepare
    from tfopt.loaders import LOADERS, detect_format, load
    from tfopt.loaders.base import graph_stats
    from tfopt.loaders.tf1 import candidate_outputs, cut_hint, input_sources
    from tfopt.passes import run_pipeline
    from tfopt.security import io_ops, security_report

    compat.check_tensorflow()

    opts = replace(options or FreezeOptions(), **overrides).validate()
    path = Path(src)
    fmt = detect_format(path)
    load_options = opts.load_options()
    described = LOADERS[fmt].describe(path, load_options)
    graph_def = described.graph_def
    nodes, ops = graph_stats(graph_def)
    every_node = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    training = Counter(c for c in (classify(n) for n in every_node) if c in CATEGORIES
                       and c not in ("identity", "unreachable", "folded_constants"))
    report = {
        "path": str(path), "format": fmt, "nodes": nodes, "ops": ops,
        "signatures": {name: {"inputs": [t.to_dict() for t in ins],
                              "outputs": [t.to_dict() for t in outs]}
                       for name, (ins, outs) in described.signatures.items()},
        "candidates": None, "training_ops": dict(sorted(training.items())),
        "variables": described.variables, "unsupported_ops": None, "security": None,
        "note": None,
    }
    if not described.signatures:
        found = candidate_outputs(graph_def)
        placeholders, readers = input_sources(graph_def, found)
        report["candidates"] = {
            "outputs": found,
            "inputs": [{"name": p.name, "dtype": _dtype(p), "shape": _shape(p)}
                       for p in placeholders],
            "iterators": [_reader_hint(graph_def, r, cut_hint) for r in readers]}
    try:
        loaded = load(path, load_options).model
        # what verification would run: the frozen signature, before any pass
        report["security"] = security_report(
            io_ops(loaded.graph_def, path if path.is_dir() else None), opts.allow_io_ops)
        model, _ = run_pipeline(loaded, opts.passes)
    except TfoptError as exc:  # e.g. outputs still to be chosen: the rest stands
        report["note"] = f"not frozen, so no target check: {exc}"
        return report
    export = opts.export_options()
    report["unsupported_ops"] = {fmt: module.unsupported_ops(prepare(fmt, model)[0], export)
                                 for fmt, module in EXPORTERS.items()
                                 if not missing_extra(fmt)}
    return report


def _dtype(node: Any) -> str:
    import tensorflow as tf

    return tf.as_dtype(node.attr["dtype"].type).name


def _shape(node: Any) -> list | None:
    shape = node.attr["shape"].shape
    return None if shape.unknown_rank else [None if d.size < 0 else d.size for d in shape.dim]


def _reader_hint(graph_def: Any, reader: Any, cut_hint: Any) -> dict:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    return {"node": reader.name, "op": reader.op, "use": f"--inputs {cut_hint(graph, reader)}"}


def text(report: dict) -> str:
    """The human-readable form of an inspect report."""
    lines = [f"{report['path']} ({report['format']}): {report['nodes']} nodes"]

    def spec(t: dict) -> str:
        shape = "?" if t["shape"] is None else "[" + ",".join(
            "?" if d is None else str(d) for d in t["shape"]) + "]"
        return f"{t['name']} {t['dtype']}{shape}"

    for name, sig in report["signatures"].items():
        lines.append(f"signature {name}")
        lines.append("  inputs  " + (", ".join(spec(t) for t in sig["inputs"]) or "none"))
        lines.append("  outputs " + (", ".join(spec(t) for t in sig["outputs"]) or "none"))
    candidates = report["candidates"]
    if candidates is not None:
        lines.append("no signature; candidates:")
        lines.append("  inputs  " + (", ".join(spec(t) for t in candidates["inputs"])
                                     or "none (placeholders)"))
        for reader in candidates["iterators"]:
            lines.append(f"  input from {reader['node']} ({reader['op']}): {reader['use']}")
        lines.append("  outputs " + (", ".join(candidates["outputs"]) or "none found"))
    v = report["variables"]
    lines.append(f"variables {v['variables']} ({v['variable_bytes']} bytes), of which optimizer "
                 f"state {v['optimizer_variables']} ({v['optimizer_variable_bytes']} bytes)")
    lines.append("training-only and debug ops: " + (", ".join(
        f"{k} {n}" for k, n in report["training_ops"].items()) or "none"))
    top = sorted(report["ops"].items(), key=lambda kv: -kv[1])
    lines.append("ops: " + ", ".join(f"{op} {n}" for op, n in top))
    if report["unsupported_ops"] is not None:
        for fmt, ops in report["unsupported_ops"].items():
            lines.append(f"{fmt}: " + (f"cannot express {', '.join(ops)}" if ops
                                       else "every op supported"))
    security = report.get("security")
    if security and security["io_ops"]:
        lines.append("side-effect ops (run only with --allow-io-ops): " + ", ".join(
            f"{o['op']} {o['node']} ({o['family']})" for o in security["io_ops"]))
    elif security is not None:
        lines.append("side-effect ops: none")
    if report["note"]:
        lines.append(report["note"])
    return "\n".join(lines)
