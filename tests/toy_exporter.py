"""A toy target, as a package outside tfopt would ship one (an entry point in the
"tfopt.exporters" group): the frozen graph's constants and node list in a .npz, run by a
numpy interpreter of the few ops a small dense net freezes to. tests/test_exporter_shape.py
installs it and converts through it."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

FORMAT = "toy"
FILENAME = "model.npz"
SUFFIX = ".npz"
COMPANIONS: tuple[str, ...] = ()
DEFAULT = False
EXTRA = None
PACKAGES = ("numpy",)
MODES = frozenset({"none"})
PREPARE: tuple[str, ...] = ()
KERNELS = {
    "Identity": lambda a: a, "Relu": lambda a: np.maximum(a, 0),
    "MatMul": lambda a, b: a @ b, "BiasAdd": lambda a, b: a + b, "AddV2": lambda a, b: a + b,
}
_STRUCTURE = ("Const", "Placeholder")


def export(model, path: Path, options):
    from tfopt.exporters import Exported
    from tfopt.graph import const_value

    nodes = [{"name": n.name, "op": n.op, "inputs": list(n.input)}
             for n in model.graph_def.node]
    constants = {f"const{i}": const_value(n) for i, n in enumerate(model.graph_def.node)
                 if n.op == "Const"}
    with open(path, "wb") as file:
        np.savez(file, graph=json.dumps(nodes), **constants)
    return Exported()


def _nodes(path: Path) -> list[dict]:
    return json.loads(str(np.load(path)["graph"]))


def runner(path: Path, model):
    stored = np.load(path)
    nodes = _nodes(path)

    def run(feed: dict) -> dict:
        values = dict(feed)
        for i, node in enumerate(nodes):
            if node["op"] == "Const":
                values[node["name"]] = stored[f"const{i}"]
            elif node["op"] != "Placeholder":
                values[node["name"]] = KERNELS[node["op"]](*(values[r] for r in node["inputs"]))
        return {t.name: values[t.name] for t in model.outputs}
    return run


def trace(path: Path, feed: dict, signature=None) -> dict:
    from tfopt.errors import TraceUnavailable

    raise TraceUnavailable("the toy keeps no intermediate tensors")


def describe(path: Path, model) -> dict[str, int]:
    return dict(Counter(n["op"] for n in _nodes(path) if n["op"] not in _STRUCTURE))


def check_options(options) -> None:
    """The toy reads no option."""


def unsupported_ops(model, options) -> list[str]:
    return sorted({n.op for n in model.graph_def.node} - set(KERNELS) - set(_STRUCTURE))


def read_precision(path: Path) -> str:
    return "fp32"


def open_artifact(path: Path, signature: str, allow_io_ops: bool = False):
    raise NotImplementedError("the toy is not compared")
