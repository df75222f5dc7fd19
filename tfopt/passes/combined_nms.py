"""CombinedNonMaxSuppression in ops the TFLite builtins have (the converter leaves it a
Flex op, which the pip interpreter cannot run): per batch and class, NonMaxSuppressionV4
(the NON_MAX_SUPPRESSION_V4 builtin), then the classes' selections merged by score with
TopKV2, padded with zeros and clipped as the op does.

    CombinedNonMaxSuppression(boxes[B,N,q,4], scores[B,N,C], k, total, iou, threshold)
      -> per (b, c): NonMaxSuppressionV4(boxes[b,:,c or 0], scores[b,:,c], k, iou, threshold)
         -> Gather -> ConcatV2 -> TopKV2(total) -> boxes, scores, classes, valid

B, N, q and C must be static and the four scalars constant; B x C suppressions are
unrolled. Written here because neither TF nor the converter decomposes the op. ONNX runs
it (combined_nms_per_class_boxes) only where tf2onnx cannot: boxes per class (q > 1).
"""
from __future__ import annotations

from typing import Any

from tfopt.graph import (
    const_value,
    copy_graph,
    imported,
    is_control,
    node_name,
    static_shape,
    unique_name,
)
from tfopt.passes.base import PassContext, PassLog, register

MAX_UNROLLED = 4096  # batch x classes suppressions past which the graph would be huge


@register("combined_nms")
def combined_nms(graph_def, ctx: PassContext, log: PassLog):
    return _decompose(graph_def, log, shared_boxes=True)


@register("combined_nms_per_class_boxes")
def combined_nms_per_class_boxes(graph_def, ctx: PassContext, log: PassLog):
    return _decompose(graph_def, log, shared_boxes=False)


def _decompose(graph_def, log: PassLog, shared_boxes: bool):
    """shared_boxes: also the ops whose boxes all classes share (q = 1)."""
    targets = [n for n in graph_def.node if n.op == "CombinedNonMaxSuppression"]
    if not targets:
        return graph_def
    out = copy_graph(graph_def)
    nodes = {n.name: n for n in out.node}
    graph = imported(graph_def)
    taken = set(nodes)
    replaced: dict[str, list[str]] = {}
    for node in targets:
        plan = _plan(node, nodes, graph)
        if isinstance(plan, str):
            log.skip(node.name, plan)
            continue
        if plan[2] == 1 and not shared_boxes:
            log.skip(node.name, "its classes share their boxes, which the exporter's own "
                                "conversion handles")
            continue
        sub, placeholders, results = _decomposition(*plan)
        outputs = _splice(out, sub, node.name + "/builtins",
                          dict(zip(placeholders, node.input[:2])), results, taken)
        replaced[node.name] = outputs
        log.change("decomposed", node=node.name, suppressions=plan[0] * plan[3])
    if not replaced:
        return graph_def
    for reader in out.node:
        for i, ref in enumerate(reader.input):
            source = node_name(ref)
            if source in replaced and not is_control(ref):
                port = int(ref.rpartition(":")[2]) if ":" in ref else 0
                reader.input[i] = replaced[source][port]
    kept = [n for n in out.node if n.name not in replaced]
    del out.node[:]
    out.node.extend(kept)
    for reader in out.node:  # control edges on a replaced op now wait for its outputs
        reader.input[:] = [f"^{node_name(replaced[node_name(r)][0])}"
                           if is_control(r) and node_name(r) in replaced else r
                           for r in reader.input]
    return out


def _plan(node, nodes: dict, graph) -> tuple | str:
    """(batch, boxes, q, classes, k, total, iou, threshold, pad_per_class, clip), or why
    the op stays."""
    refs = [r for r in node.input if not is_control(r)]
    constants = []
    for ref, what in zip(refs[2:6], ("max_output_size_per_class", "max_total_size",
                                     "iou_threshold", "score_threshold")):
        source = nodes.get(node_name(ref))
        if source is None or source.op != "Const":
            return f"its {what} is computed, not a constant"
        constants.append(const_value(source).item())
    boxes, scores = (static_shape(graph, r) for r in refs[:2])
    if boxes is None or scores is None or None in boxes or None in scores:
        return (f"its boxes {boxes} and scores {scores} need static shapes; fix the unknown "
                "dimensions with --input-shape")
    batch, count, q, _ = boxes
    classes = scores[2]
    if batch * classes > MAX_UNROLLED:
        return f"{batch} x {classes} per-class suppressions is too many to unroll"
    return (batch, count, q, classes, *constants, node.attr["pad_per_class"].b,
            node.attr["clip_boxes"].b)


def _decomposition(batch: int, count: int, q: int, classes: int, per_class: int, total: int,
                   iou: float, threshold: float, pad_per_class: bool, clip: bool) -> Any:
    """The traced unrolled suppression: (its GraphDef, its input placeholders (boxes,
    scores), its output tensors (nmsed boxes, scores, classes, valid detections))."""
    import tensorflow as tf

    size = min(per_class * classes, total) if pad_per_class else total
    per_class = min(per_class, count)

    def one_image(boxes, scores):  # boxes [N, q, 4], scores [N, C]
        picked_boxes, picked_scores, picked_classes = [], [], []
        for c in range(classes):
            class_boxes = boxes[:, c if q > 1 else 0, :]
            class_scores = scores[:, c]
            index, valid = tf.raw_ops.NonMaxSuppressionV4(
                boxes=class_boxes, scores=class_scores, max_output_size=per_class,
                iou_threshold=iou, score_threshold=threshold, pad_to_max_output_size=True)
            live = tf.range(per_class) < valid
            picked_boxes.append(tf.gather(class_boxes, index))
            picked_scores.append(tf.where(live, tf.gather(class_scores, index), -1.0))
            picked_classes.append(tf.fill([per_class], float(c)))
        all_scores = tf.concat(picked_scores, 0)
        best_scores, order = tf.math.top_k(all_scores, k=min(size, per_class * classes))
        live = best_scores > -1.0
        kept_boxes = tf.gather(tf.concat(picked_boxes, 0), order)
        if clip:
            kept_boxes = tf.clip_by_value(kept_boxes, 0.0, 1.0)
        zeros = tf.zeros_like(best_scores)
        nmsed = [tf.where(live[:, None], kept_boxes, 0.0), tf.where(live, best_scores, zeros),
                 tf.where(live, tf.gather(tf.concat(picked_classes, 0), order), zeros)]
        missing = size - per_class * classes
        if missing > 0:  # fewer candidates than outputs: pad
            nmsed = [tf.pad(t, [[0, missing]] + [[0, 0]] * (t.shape.rank - 1)) for t in nmsed]
        return nmsed + [tf.reduce_sum(tf.cast(live, tf.int32))]

    @tf.function(input_signature=[tf.TensorSpec([batch, count, q, 4], tf.float32),
                                  tf.TensorSpec([batch, count, classes], tf.float32)])
    def unrolled(boxes, scores):
        images = [one_image(boxes[b], scores[b]) for b in range(batch)]
        return [tf.stack([image[i] for image in images]) for i in range(4)]

    traced = unrolled.get_concrete_function()
    return (traced.graph.as_graph_def(), [t.op.name for t in traced.inputs],
            [t.name for t in traced.outputs])


def _splice(graph_def, sub, prefix: str, feeds: dict[str, str], results: list[str],
            taken: set[str]) -> list[str]:
    """Add a traced subgraph's nodes under `prefix`, each placeholder read from the ref
    `feeds` gives it; returns the refs that the subgraph's `results` tensors became."""
    renamed = {}
    for node in sub.node:
        if node.name not in feeds:
            renamed[node.name] = unique_name(f"{prefix}/{node.name}", taken)
            taken.add(renamed[node.name])

    def mapped(ref: str) -> str:
        control, name = is_control(ref), node_name(ref)
        suffix = ref[len(name) + control:]
        if name in feeds:
            return feeds[name]
        return ("^" if control else "") + renamed[name] + suffix

    for node in sub.node:
        if node.name in feeds:
            continue
        new = graph_def.node.add()
        new.CopyFrom(node)
        new.name = renamed[node.name]
        new.input[:] = [mapped(r) for r in node.input]
        new.ClearField("device")
    return [mapped(ref.removesuffix(":0")) for ref in results]
