"""The maintained ONNX optimizers as rewrites: onnxoptimizer's fuse and eliminate passes,
then onnxslim. Their changes are reported as the op-count difference they made. Each copies
the model several times, so each gets it without its kernels (registry.kernels_as_inputs):
measured on MobileNetV2 and EfficientNetB0, they then change the same ops."""
from __future__ import annotations

from collections import Counter
from typing import Any

from tfopt.exporters.onnx.rewrites.registry import register_rewrite
from tfopt.passes.base import PassLog


def log_op_delta(before: Any, after: Any, log: PassLog) -> None:
    """One change entry per op type whose count a library step changed."""
    old = Counter(n.op_type for n in before.graph.node)
    new = Counter(n.op_type for n in after.graph.node)
    for op, count in sorted((old - new).items()):
        log.change("removed", op=op, count=count)
    for op, count in sorted((new - old).items()):
        log.change("added", op=op, count=count)


# onnxoptimizer names each new value by scanning the graph's names (Graph::getNextUnique):
# measured on an AddV2/Mul chain, 5 s at 10k nodes and 54 s at 30k
QUADRATIC_FROM_NODES = 20_000


@register_rewrite("onnxoptimizer", sees_kernels=False)
def onnxoptimizer(proto: Any, log: PassLog) -> Any:
    import onnxoptimizer as library

    if len(proto.graph.node) > QUADRATIC_FROM_NODES:
        log.skip("*", f"{len(proto.graph.node)} nodes: onnxoptimizer's time grows with the "
                      f"square of the node count (skipped above {QUADRATIC_FROM_NODES})")
        return proto

    out = library.optimize(proto, library.get_fuse_and_elimination_passes())
    log_op_delta(proto, out, log)
    return out


@register_rewrite("onnxslim", sees_kernels=False)
def onnxslim(proto: Any, log: PassLog) -> Any:
    import onnx
    import onnxslim as library

    before = onnx.ModelProto()
    before.CopyFrom(proto)  # onnxslim may change its argument
    out = library.slim(proto)
    log_op_delta(before, out, log)
    return out
