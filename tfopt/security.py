"""Ops with side effects outside the graph, found before anything runs the source model.

A model is a program: verification runs the original, so a serving graph that writes a
file would write it. The families below are matched against TensorFlow's own op registry
(every op registered in this process), so a new op of a family is caught without a list
to maintain by hand.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfopt.errors import InputError

# family -> op-name pattern, applied to every op the registry knows
FAMILIES = {
    "python": r"PyFunc|PyFuncStateless|EagerPyFunc|GeneratorDataset",
    "file": r"ReadFile|WriteFile|MatchingFiles|FileSystemSetConfiguration|Save|SaveV2|"
            r"SaveSlices|Restore|RestoreV2|RestoreSlice|MergeV2Checkpoints|DumpTensor|"
            r"(Experimental)?DatasetToTFRecord|SaveDataset(V2)?|LoadDataset|DistributedSave|"
            r"LoadAndRemapMatrix|InitializeTableFromTextFile(V2)?|ImportEvent|"
            r"\w*Reader(V2)?|\w*(TFRecord|TextLine|FixedLengthRecord|CSV|LMDB|Sql|"
            r"MatchingFiles)\w*Dataset\w*|CalibrationStatisticsSaver",
    "summary_writer": r"\w*SummaryWriter|Write\w*Summary|CloseSummaryWriter",
    "network": r"Rpc\w*|DataServiceDataset\w*|Collective\w*",
}
PYTHON_CALLBACKS = "python"


@dataclass(frozen=True)
class IoOp:
    node: str
    op: str
    family: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@functools.cache
def io_op_families() -> dict[str, str]:
    """Every registered op that belongs to a family, with its family."""
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import pywrap_tf_session

    registry = op_def_pb2.OpList()
    registry.ParseFromString(pywrap_tf_session.TF_GetBuffer(
        pywrap_tf_session.TF_GetAllOpList()))
    found = {}
    for family, pattern in FAMILIES.items():
        compiled = re.compile(f"(?:{pattern})")
        found.update({op.name: family for op in registry.op
                      if op.name not in found and compiled.fullmatch(op.name)})
    return found


def io_ops(graph_def: Any, source: Path | None = None) -> list[IoOp]:
    """The side-effect ops of a graph, its function library included. A table initializer
    reading a file from the source's own assets/ directory is normal and not listed; a
    PrintV2 counts only when it prints to a file."""
    families = io_op_families()
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    by_name = {n.name: n for n in graph_def.node}
    found = []
    for node in nodes:
        family = families.get(node.op)
        if node.op == "PrintV2" and node.attr["output_stream"].s.startswith(b"file://"):
            family = "file"
        if family is None or _reads_own_asset(node, by_name, source):
            continue
        found.append(IoOp(node.name, node.op, family))
    return sorted(found, key=lambda o: (o.family, o.op, o.node))


def _reads_own_asset(node: Any, nodes: dict, source: Path | None) -> bool:
    if not node.op.startswith("InitializeTableFromTextFile") or source is None:
        return False
    import tensorflow as tf

    filename = nodes.get(node.input[1].split(":")[0]) if len(node.input) > 1 else None
    if filename is None or filename.op != "Const":
        return False
    path = Path(tf.make_ndarray(filename.attr["value"].tensor).item().decode())
    assets = (source / "assets").resolve()
    return path.resolve().is_relative_to(assets)


def refuse_io_ops(found: list[IoOp], allowed: bool) -> None:
    """Python callbacks are always refused (their code is not in the model); the other
    families only without --allow-io-ops."""
    python = [o for o in found if o.family == PYTHON_CALLBACKS]
    if python:
        raise InputError(f"the model calls back into Python ({_names(python)}: "
                         "tf.py_function or tf.numpy_function); the Python code is not saved "
                         "in the model, so it cannot be frozen or exported; rewrite it with "
                         "TensorFlow ops")
    if found and not allowed:
        raise InputError(f"the model's serving graph has ops with side effects outside it "
                         f"({_names(found)}); verification runs the original model, so tfopt "
                         "stops here; pass --allow-io-ops if you trust the model")


def _names(found: list[IoOp]) -> str:
    shown = ", ".join(f"{o.op} {o.node}" for o in found[:4])
    return shown + (f" and {len(found) - 4} more" if len(found) > 4 else "")


def security_report(found: list[IoOp], allowed: bool) -> dict:
    return {"io_ops": [o.to_dict() for o in found], "allowed": bool(found) and allowed,
            "families": sorted(FAMILIES)}
