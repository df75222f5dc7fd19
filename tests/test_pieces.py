"""Grappler on pieces of a large graph: the whole graph's result, cut only where it may be."""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from test_passes import build, run_graph

from tfopt.graph import op_histogram
from tfopt.passes import PassLog
from tfopt.passes.grappler import OPTIMIZERS, optimize
from tfopt.passes.pieces import optimize_in_pieces


def blocks(residual: bool):
    def graph():
        rng = np.random.default_rng(0)
        h = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 4], name="x")
        for _ in range(12):
            kernel = (rng.standard_normal((3, 3, 4, 4)) * 0.3).astype(np.float32)
            y = tf.nn.conv2d(h, kernel, 1, "SAME")
            # folds within a block: constants scaled, an identity, a constant subgraph
            y = y * (tf.constant(2.0) * tf.constant(0.5)) + tf.identity(tf.ones([4]))
            y = tf.nn.relu6(tf.identity(y))
            h = h + y if residual else y
        tf.identity(h, name="y")
    return build(graph)


def in_pieces(graph_def, log):
    return optimize_in_pieces(graph_def, ["x", "y"],
                              lambda graph, fetch: optimize(graph, fetch, OPTIMIZERS), log,
                              whole_below=0, piece_nodes=6)


def test_pieces_give_the_whole_graphs_result():
    graph_def = blocks(residual=False)
    log = PassLog()
    pieces = in_pieces(graph_def, log)
    whole = optimize(graph_def, ["x", "y"], OPTIMIZERS)
    assert next(c["count"] for c in log.changes if c["action"] == "pieces") > 3
    assert op_histogram(pieces) == op_histogram(whole)
    assert len(pieces.node) < len(graph_def.node)  # it folded
    feed = {"x:0": np.random.default_rng(1).standard_normal((2, 8, 8, 4)).astype(np.float32)}
    np.testing.assert_allclose(run_graph(pieces, feed, "y:0"), run_graph(whole, feed, "y:0"),
                               rtol=1e-6, atol=1e-6)


def test_no_cut_where_a_tensor_other_than_an_activation_crosses():
    graph_def = blocks(residual=True)  # the residual sum crosses every block boundary
    log = PassLog()
    pieces = in_pieces(graph_def, log)
    assert not any(c["action"] == "pieces" for c in log.changes)
    assert "no point to cut it at" in log.skipped[0]["reason"]
    assert op_histogram(pieces) == op_histogram(optimize(graph_def, ["x", "y"], OPTIMIZERS))
