"""MatMul(A 2-D, B const) + Add(bias const [N]) -> Gemm: Keras' Dense as one node.

Written here because neither onnxoptimizer's fuse_matmul_add_bias_into_gemm nor onnxslim
fuses tf2onnx's Dense (measured on MobileNetV2: both leave the MatMul + Add pair).
"""
from __future__ import annotations

from typing import Any

from tfopt.exporters.onnx.graph import OnnxGraph
from tfopt.exporters.onnx.rewrites.registry import kernels_as_inputs, register_rewrite
from tfopt.passes.base import PassLog


@register_rewrite("gemm", min_opset=7, sees_kernels=False)
def gemm(proto: Any, log: PassLog) -> Any:
    import onnx

    # shapes only, so no second copy of the weights: inference on the model without its
    # kernels (inputs of their shape there), dims read off the initializers
    inferred = onnx.shape_inference.infer_shapes(kernels_as_inputs(proto)[0])
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             list(inferred.graph.value_info) + list(inferred.graph.input)
             if v.type.tensor_type.HasField("shape")}
    graph = OnnxGraph(proto)
    initializers = graph.initializers
    # a kernel is an initializer, or set aside as an input of its shape (run_rewrites)
    matrices = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
                for i in proto.graph.input if len(i.type.tensor_type.shape.dim) == 2
                and all(d.HasField("dim_value") for d in i.type.tensor_type.shape.dim)}
    matrices.update((name, list(t.dims)) for name, t in initializers.items() if len(t.dims) == 2)
    fused, dropped = {}, set()
    for node in proto.graph.node:
        if node.op_type != "MatMul":
            continue
        reason = None
        dims = matrices.get(node.input[1])
        after = graph.readers.get(node.output[0], [])
        if ranks.get(node.input[0]) != 2:
            reason = "A is not known to be 2-D"
        elif dims is None:
            reason = "B is not a 2-D initializer or input of known shape"
        elif node.output[0] in graph.outputs:
            reason = "its output is a graph output"
        elif len(after) != 1 or after[0].op_type != "Add":
            reason = "its output is not read by exactly one Add"
        if reason:
            log.skip(node.name, reason)
            continue
        assert dims is not None  # for mypy: no reason means it was checked
        add = after[0]
        bias = next((i for i in add.input if i != node.output[0]), None)
        columns = dims[1]
        if bias not in initializers or list(initializers[bias].dims) != [columns]:
            log.skip(node.name, f"the Add's other input is not a [{columns}] bias")
            continue
        fused[id(add)] = onnx.helper.make_node("Gemm", [node.input[0], node.input[1], bias],
                                               list(add.output), name=add.name or node.name)
        dropped.add(id(node))
        log.change("fused", node=add.name or node.name, pattern="MatMul+Add")
    if fused:
        graph.replace(fused, dropped)
    return proto
