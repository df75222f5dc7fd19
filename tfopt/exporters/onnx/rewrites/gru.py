"""Keras GRU loops in ONNX -> the native GRU op.

tf2onnx maps a Keras 3 LSTM to ONNX LSTM but leaves a GRU as a generic Loop, which runs
slower and which OpenVINO rejects. A Loop whose body is a GRU cell reads, from outside: the
time-major input X (gathered at the iteration index), the kernel W [in, 3u], the recurrent
kernel R [u, 3u] and the bias ([2, 3u] with reset_after, else [3u]); it carries the state h.
That is ONNX GRU(X, W^T, R^T, B, initial_h) with Keras' gate order (z, r, h) and
linear_before_reset = reset_after.

Roles are read off the body's structure, and every rewrite is then checked by running the
model before and after on random inputs: a loop that is not exactly a GRU stays a Loop.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tfopt.exporters.onnx.rewrites.registry import register_rewrite
from tfopt.exporters.onnx.runtime import run_random
from tfopt.passes.base import PassLog


def _body(loop):
    return next(a.g for a in loop.attribute if a.name == "body")


def _gru_roles(loop, constants: dict) -> dict | None:
    """W, R, B, X and the loop slots of a GRU-cell Loop, or None."""
    body = _body(loop)
    ops = [n.op_type for n in body.node]
    # reset_after=False multiplies the reset state by R's last third: a third MatMul
    if ops.count("Sigmoid") != 2 or ops.count("Tanh") != 1 or ops.count("MatMul") not in (2, 3):
        return None
    inputs = [i.name for i in body.input]  # iteration, cond, carried...
    carried = inputs[2:]
    outer = {name: loop.input[i] for i, name in enumerate(inputs)}  # body name -> loop input
    gather = next((n for n in body.node if n.op_type == "Gather" and n.input[0] not in inputs
                   and n.input[1] in carried), None)
    if gather is None:
        return None
    x_t = gather.output[0]
    input_mm = next((n for n in body.node if n.op_type == "MatMul" and n.input[0] == x_t), None)
    kernel = None if input_mm is None else constants.get(outer.get(input_mm.input[1]))
    if kernel is None or kernel.ndim != 2 or kernel.shape[1] % 3:
        return None
    units = kernel.shape[1] // 3
    state_mm = next((n for n in body.node if n.op_type == "MatMul" and n.input[0] in carried
                     and n is not input_mm), None)
    if state_mm is None:
        return None
    # R may be sliced first (reset_after=False takes its last third on its own)
    producers = {o: n for n in body.node for o in n.output}
    source = state_mm.input[1]
    while source in producers and producers[source].op_type in ("Slice", "Identity"):
        source = producers[source].input[0]
    recurrent = constants.get(outer.get(source))
    if recurrent is None or recurrent.shape != (units, 3 * units):
        return None
    biases = [constants.get(outer.get(name)) for name in carried]
    bias = next((b for b in biases if b is not None and b.shape in ((2, 3 * units),
                                                                     (3 * units,))), None)
    if bias is None:
        bias = np.zeros((3 * units,), kernel.dtype)
    state = carried.index(state_mm.input[0])
    scan = [o.name for o in body.output][1 + len(carried):]
    return {"kernel": kernel, "recurrent": recurrent, "bias": bias, "units": units,
            "x": gather.input[0], "state_slot": state, "carried": len(carried),
            "scan": len(scan), "h0": loop.input[2 + state]}


@register_rewrite("gru", min_opset=7)
def gru(proto: Any, log: PassLog) -> Any:
    """Replace GRU Loops by GRU ops, each kept only if onnxruntime gives the same outputs
    before and after on random inputs."""
    import onnx
    from onnx import helper, numpy_helper

    loops = [n for n in proto.graph.node if n.op_type == "Loop"]
    if not loops:
        return proto
    reference = run_random(proto)
    if reference is None:
        for loop in loops:
            log.skip(loop.name, "onnxruntime cannot run the model on random inputs, so no "
                     "rewrite could be verified")
        return proto
    graph = proto.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for loop in loops:
        roles = _gru_roles(loop, constants)
        if roles is None or roles["scan"] > 1:
            log.skip(loop.name, "its body is not a GRU cell with at most one sequence output")
            continue
        readers = {i for n in graph.node if n is not loop for i in n.input} | \
            {o.name for o in graph.output}
        state_out = loop.output[roles["state_slot"]]
        scan_out = loop.output[roles["carried"]] if roles["scan"] else None
        others = [o for o in loop.output if o not in (state_out, scan_out)]
        if any(o in readers for o in others):
            log.skip(loop.name, "the loop's counter or weights are read: not a plain cell")
            continue
        candidate = onnx.ModelProto()
        candidate.CopyFrom(proto)
        _replace(candidate.graph, loop.name, roles, state_out, scan_out, helper, numpy_helper)
        if not _same(reference, run_random(candidate)):
            log.skip(loop.name, "the GRU op's outputs differ from the loop's on random inputs")
            continue
        proto = candidate
        graph = proto.graph
        log.change("native_gru", node=loop.name, units=roles["units"],
                   linear_before_reset=int(roles["bias"].ndim == 2))
    return proto


def _same(reference: list, outputs: list | None) -> bool:
    return outputs is not None and all(
        a.shape == b.shape and np.allclose(a, b, atol=1e-5, rtol=1e-4)
        for a, b in zip(reference, outputs))


def _replace(graph, loop_name: str, roles: dict, state_out: str, scan_out, helper,
             numpy_helper) -> None:
    units = roles["units"]
    prefix = f"{loop_name}/gru"
    bias = roles["bias"]
    bias = np.concatenate([bias[0], bias[1]]) if bias.ndim == 2 else \
        np.concatenate([bias, np.zeros_like(bias)])
    weights = {f"{prefix}/W": roles["kernel"].T[None], f"{prefix}/R": roles["recurrent"].T[None],
               f"{prefix}/B": bias[None], f"{prefix}/axis0": np.array([0], np.int64),
               f"{prefix}/axis1": np.array([1], np.int64)}
    graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v), name=k)
                             for k, v in weights.items())
    nodes = [
        helper.make_node("Unsqueeze", [roles["h0"], f"{prefix}/axis0"], [f"{prefix}/h0"]),
        helper.make_node("GRU", [roles["x"], f"{prefix}/W", f"{prefix}/R", f"{prefix}/B", "",
                                 f"{prefix}/h0"], [f"{prefix}/Y", f"{prefix}/Y_h"],
                         name=prefix, hidden_size=units,
                         linear_before_reset=int(roles["bias"].ndim == 2)),
        helper.make_node("Squeeze", [f"{prefix}/Y_h", f"{prefix}/axis0"], [state_out]),
    ]
    if scan_out is not None:
        nodes.append(helper.make_node("Squeeze", [f"{prefix}/Y", f"{prefix}/axis1"], [scan_out]))
    index = next(i for i, n in enumerate(graph.node) if n.name == loop_name)
    del graph.node[index]
    for offset, node in enumerate(nodes):
        graph.node.insert(index + offset, node)
