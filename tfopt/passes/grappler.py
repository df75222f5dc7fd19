"""Grappler with only the optimizers whose output every exporter understands.

The remapper is never enabled: its _Fused* ops exist only inside TensorFlow.
"""
from __future__ import annotations

from collections import Counter

from tfopt.categories import IDENTITY_OPS
from tfopt.graph import (
    copy_graph,
    hide_contracted_dims,
    hide_shapes,
    op_histogram,
    rename_nodes,
    set_aside_kernels,
    unique_name,
)
from tfopt.passes.base import PassContext, PassLog, register
from tfopt.passes.pieces import optimize_in_pieces

# no "arithmetic": its AddOpsRewrite merges batch-norm shifts into residual AddN nodes,
# which keeps fold_scale_shift from folding them
OPTIMIZERS = ["function", "constfold", "shape", "dependency"]


def optimize(graph_def, fetch: list[str], optimizers: list[str], aggressive: bool = False):
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer

    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers[:] = optimizers
    rewrite.remapping = rewriter_config_pb2.RewriterConfig.OFF
    # TFG's default pipeline rewrites nothing, but its round trip through MLIR costs a third
    # of the time and grows faster than the graph
    rewrite.disable_tfg_optimizer = True
    # a second iteration costs as much as the first and changed no graph of the samples,
    # the zoo or the TF1 training graphs (scripts/fingerprint.py)
    rewrite.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    rewrite.experimental_disable_folding_quantization_emulation = True
    rewrite.min_graph_nodes = -1  # also graphs under 4 nodes (a lone call to inline)
    if aggressive:  # inline stateful calls too, as freezing does
        rewrite.function_optimization = rewriter_config_pb2.RewriterConfig.AGGRESSIVE
    config.graph_options.infer_shapes = True
    # the graph alone: export_meta_graph's op list, another pass over every node, is unused
    meta_graph = meta_graph_pb2.MetaGraphDef(graph_def=graph_def)
    meta_graph.collection_def["train_op"].node_list.value.extend(fetch)
    out = tf_optimizer.OptimizeGraph(config, meta_graph)
    for function in out.library.function:  # a kept call specialized to its constant inputs:
        function.attr.pop("_GrapplerSpecializedFunc", None)  # SavedModels refuse the mark
    return out


CALLS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})


def isolate_calls(graph_def, protected: frozenset[str]):
    """Rename function calls whose name prefixes other nodes' names.

    The inliner names a body node `<call>/<node>`; a clash with an existing name aborts the
    process (a CHECK failure in GraphView), as tf.cond v2's `cond/Identity` outputs cause.
    """
    if not any(n.op in CALLS for n in graph_def.node):
        return graph_def
    names = {n.name for n in graph_def.node}
    prefixes = {name.rsplit("/", i)[0] for name in names for i in range(1, name.count("/") + 1)}
    clashing = [n.name for n in graph_def.node if n.op in CALLS and n.name in prefixes
                and n.name not in protected]
    if not clashing:
        return graph_def
    renames = {}
    for name in clashing:
        renames[name] = unique_name(f"{name}_call", names | prefixes)
        names.add(renames[name])
    out = copy_graph(graph_def)
    rename_nodes(out, renames)
    return out


@register("grappler")
def grappler(graph_def, ctx: PassContext, log: PassLog):
    # the kernels as placeholders (Grappler's copies of them cost gigabytes), the layout ops
    # on them folded in numpy; a copy only when a kernel or an external weight is there to hide
    aside = set_aside_kernels(isolate_calls(graph_def, ctx.protected),
                              copy=bool(ctx.weights), fold_layout=True)  # hide_shapes writes
    shapes = hide_shapes(aside.graph_def, ctx.weights)
    hide_contracted_dims(aside.graph_def, aside.kernels)  # they are Consts again after
    out = optimize_in_pieces(aside.graph_def, list(ctx.inputs + ctx.outputs)
                             + sorted(ctx.weights) + aside.keep,
                             lambda graph, fetch: optimize(graph, fetch, OPTIMIZERS), log)
    aside.graph_def = None
    for node in out.node:
        if node.name in shapes:
            node.attr["shape"].CopyFrom(shapes[node.name])
    aside.put_back(out)
    before, after = Counter(op_histogram(graph_def)), Counter(op_histogram(out))
    for op, count in sorted((before - after).items()):
        category = "identity" if op in IDENTITY_OPS else "folded_constants"
        log.removed[category] += count
        log.change("removed", op=op, count=count)
    for op, count in sorted((after - before).items()):
        log.change("added", op=op, count=count)
    fused = sorted(op for op in after if op.startswith("_"))
    if fused:
        raise RuntimeError(f"Grappler emitted TF-internal ops {fused}; no exporter reads them")
    return out
