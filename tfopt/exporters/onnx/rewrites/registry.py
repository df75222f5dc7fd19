"""The registry of ONNX rewrites (by name, with the opsets they apply to, after OnnxSlim's
`@register_fusion_pattern`) and the driver that runs a list of them.

A rewrite is `(proto, log) -> proto`: it may change the proto it is handed (the driver
gives it a copy) and reports what it changed and what it skipped, with the reason, through
`log`, as the TF passes do. The driver keeps a result only if it passes the full
onnx.checker (shape inference included); a failing step is reported, never fatal. A rewrite
registered with `sees_kernels=False` (one that reads no kernel value, such as the libraries,
which copy the whole model several times) gets the large kernels as graph inputs instead of
initializers, and they come back after it, as the TF side sets them aside around Grappler
and tf2onnx: the driver's copy and check then cost no weight bytes.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tfopt.errors import first_line
from tfopt.exporters.onnx.graph import opset
from tfopt.graph import KERNEL_ELEMENTS
from tfopt.logs import native_stderr_silenced
from tfopt.passes.base import PassLog

RewriteFn = Callable[[Any, PassLog], Any]


@dataclass(frozen=True)
class OnnxRewrite:
    name: str
    fn: RewriteFn
    min_opset: int = 1
    max_opset: int | None = None
    sees_kernels: bool = True  # False: run on the model with its kernels as graph inputs

    def applies(self, version: int) -> bool:
        return self.min_opset <= version and (self.max_opset is None
                                              or version <= self.max_opset)


REWRITES: dict[str, OnnxRewrite] = {}


def register_rewrite(name: str, min_opset: int = 1, max_opset: int | None = None,
                     sees_kernels: bool = True) -> Callable[[RewriteFn], RewriteFn]:
    def add(fn: RewriteFn) -> RewriteFn:
        if name in REWRITES:
            raise ValueError(f"ONNX rewrite {name} registered twice")
        REWRITES[name] = OnnxRewrite(name, fn, min_opset, max_opset, sees_kernels)
        return fn
    return add


# ops that read a weight next to an activation (its input at these positions): no folder
# can fold them, so a kernel only they read can be a graph input while a library works
KERNEL_INPUTS = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1, "Gather": 0}


def kernels_as_inputs(proto: Any) -> tuple[Any, dict[str, Any]]:
    """A model whose large float initializers that only KERNEL_INPUTS read (next to a
    non-constant input) are graph inputs of their type and shape, and those initializers by
    name. The model is rebuilt around them; the kernels themselves are not copied."""
    import math

    import onnx

    initializers = {t.name: t for t in proto.graph.initializer}
    readers: dict[str, list] = {}
    for node in proto.graph.node:
        for position, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, position))

    def kernel(tensor: Any) -> bool:
        if tensor.data_type != onnx.TensorProto.FLOAT or \
                math.prod(tensor.dims) < KERNEL_ELEMENTS or tensor.name not in readers:
            return False
        return all(KERNEL_INPUTS.get(node.op_type) == position and any(
            other and other not in initializers for other in node.input if other != tensor.name)
            for node, position in readers[tensor.name])

    aside = {t.name: t for t in proto.graph.initializer if kernel(t)}
    if not aside:
        return proto, {}
    view = onnx.ModelProto()
    _copy_fields(proto, view, skip="graph")
    _copy_fields(proto.graph, view.graph, skip="initializer")
    view.graph.initializer.extend(t for t in proto.graph.initializer if t.name not in aside)
    view.graph.input.extend(onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims))
                            for name, t in aside.items())
    return view, aside


def _copy_fields(source: Any, target: Any, skip: str) -> None:
    """Every set field of a message but one, copied."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # a repeated field (its descriptor's API varies)
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def kernels_back(proto: Any, aside: dict[str, Any]) -> None:
    """The kernels as initializers again, in place: those the model still reads."""
    read = {name for node in proto.graph.node for name in node.input}
    inputs = [i for i in proto.graph.input if i.name not in aside]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    proto.graph.initializer.extend(t for name, t in aside.items() if name in read)


def run_rewrites(proto: Any, names: list[str] | tuple[str, ...]) -> tuple[Any, list[dict]]:
    """Run the named rewrites in turn; returns the last good model and one step per rewrite
    (nodes after it, its changes and skips, or its error). The kernels stay graph inputs
    across consecutive rewrites that do not see them; every check runs without them (they
    are inputs of their type and shape there, and shape inference needs no more)."""
    import onnx

    steps = []
    aside: dict[str, Any] = {}
    for name in names:
        rewrite = REWRITES[name]
        log = PassLog()
        version = opset(proto)
        if not rewrite.applies(version):
            log.skip("*", f"opset {version} is outside {rewrite.min_opset}.."
                          f"{rewrite.max_opset or ''}")
            steps.append(_step(name, proto, log))
            continue
        if rewrite.sees_kernels and aside:
            kernels_back(proto, aside)
            aside = {}
        elif not rewrite.sees_kernels and not aside:
            proto, aside = kernels_as_inputs(proto)
        source = onnx.ModelProto()
        source.CopyFrom(proto)
        try:
            with contextlib.redirect_stdout(io.StringIO()), native_stderr_silenced():
                candidate = rewrite.fn(source, log)
            del source
            onnx.checker.check_model(candidate if aside else kernels_as_inputs(candidate)[0],
                                     full_check=True)
        except Exception as exc:  # the optimizers raise anything; keep the last good model
            steps.append({"step": name, "error": first_line(exc)})
            continue
        proto = candidate
        steps.append(_step(name, proto, log))
    if aside:
        kernels_back(proto, aside)
    return proto, steps


def _step(name: str, proto: Any, log: PassLog) -> dict:
    return {"step": name, "nodes": len(proto.graph.node), "changes": log.changes,
            "skipped": log.skipped}


