"""The padded non-max suppression that freezing kept whole (for TFLite's fusion) as the one
op it implements, which tf2onnx turns into ONNX NonMaxSuppression (inlined, the function
is a tiled while loop of some forty ops):

    PartitionedCall(f: _implements=non_max_suppression_padded_v2,
                    boxes[N,4], scores[N], max_output_size, iou, score_threshold, ...)
        -> NonMaxSuppressionV4(boxes, scores, max_output_size, iou, score_threshold,
                               pad_to_max_output_size=True)

the same replacement the TFLite converter makes. Batched boxes ([B,N,4]) keep the call,
which inline_xla_calls then inlines.
"""
from __future__ import annotations

from tfopt.graph import DT_FLOAT, copy_graph, imported, static_shape
from tfopt.passes.base import PassContext, PassLog, register

_NMS_PADDED = "non_max_suppression_padded_v2"


@register("fused_nms_to_op")
def fused_nms_to_op(graph_def, ctx: PassContext, log: PassLog):
    library = {f.signature.name: f for f in graph_def.library.function
               if f.attr["_implements"].s.decode() == _NMS_PADDED}
    calls = [n for n in graph_def.node if "f" in n.attr and n.attr["f"].func.name in library]
    if not calls:
        return graph_def
    graph = imported(graph_def)
    out = copy_graph(graph_def)
    nodes = {n.name: n for n in out.node}
    for call in calls:
        data = [r for r in call.input if not r.startswith("^")]
        boxes = static_shape(graph, data[0])
        if boxes is None or len(boxes) != 2 or len(data) < 5:
            log.skip(call.name, f"its boxes have shape {boxes}, not [N, 4]: the batched "
                                "form has no single op")
            continue
        node = nodes[call.name]
        control = [r for r in call.input if r.startswith("^")]
        node.op = "NonMaxSuppressionV4"
        node.input[:] = data[:5] + control
        node.attr.clear()
        node.attr["T"].type = DT_FLOAT
        node.attr["T_threshold"].type = DT_FLOAT
        node.attr["pad_to_max_output_size"].b = True
        log.change("replaced", node=call.name, function=call.attr["f"].func.name,
                   op="NonMaxSuppressionV4")
    return out
