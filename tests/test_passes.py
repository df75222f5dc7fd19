"""Each pass alone, on tiny hand-built graphs."""
from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfopt.graph import bypass_nodes
from tfopt.memory import MAPPED_SOURCES, older_objects_frozen
from tfopt.model import Model, TensorSpec
from tfopt.passes import REGISTRY, PassContext, PassLog, run_pipeline


def build(fn):
    graph = tf.Graph()
    with graph.as_default():
        fn()
    return graph.as_graph_def()


def run_graph(graph_def, feed: dict, fetch: str):
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(fetch, feed)


def debug_graph():
    x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
    checked = tf.debugging.check_numerics(x, "bad")
    assert_op = tf.debugging.assert_positive(tf.shape(x)[0])
    summary = tf.compat.v1.summary.scalar("m", tf.reduce_mean(x))
    printed = tf.print("x", x)
    with tf.control_dependencies([assert_op, summary, printed]):
        tf.identity(tf.nn.relu(checked) * 2.0, name="y")


def test_strip_training_removes_debug_and_keeps_the_math():
    graph_def = build(debug_graph)
    ctx, log = PassContext(("x",), ("y",)), PassLog()
    stripped = REGISTRY["strip_training"](graph_def, ctx, log)
    ops = {n.op for n in stripped.node}
    assert not ops & {"CheckNumerics", "Assert", "PrintV2", "StringFormat", "ScalarSummary"}
    assert log.removed["debug"] >= 3 and log.removed["summaries"] == 1
    feed = {"x:0": np.array([[-1.0, 0.5, 2.0]], np.float32)}
    np.testing.assert_array_equal(run_graph(stripped, feed, "y:0"), [[0.0, 1.0, 4.0]])


def test_strip_training_skips_a_sink_whose_output_is_used():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [3], name="x")
        summary = tf.compat.v1.summary.scalar("m", tf.reduce_mean(x))
        tf.strings.length(summary, name="y")  # a real consumer of the summary's bytes

    log = PassLog()
    out = REGISTRY["strip_training"](build(graph), PassContext(("x",), ("y",)), log)
    assert "ScalarSummary" in {n.op for n in out.node}
    assert log.skipped and "feeds y" in log.skipped[0]["reason"]


def test_prune_classifies_what_it_drops():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [2], name="x")
        tf.identity(x * 3.0, name="y")
        with tf.name_scope("gradients"):
            tf.identity(x * 5.0, name="g")
        tf.raw_ops.ShardedFilename(basename="a", shard=0, num_shards=1, name="shard")
        tf.constant(1.0, name="dangling")

    log = PassLog()
    out = REGISTRY["prune"](build(graph), PassContext(("x",), ("y",)), log)
    assert {n.name for n in out.node} == {"x", "y", "mul", "mul/y"}
    assert log.removed["gradients"] == 3 and log.removed["save_restore"] >= 1
    assert log.removed["unreachable"] >= 1


def test_grappler_folds_constants_and_never_fuses():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 8, 8, 2], name="x")
        w = tf.constant(np.ones((3, 3, 2, 4), np.float32)) * 0.5  # foldable
        conv = tf.nn.conv2d(x, w, 1, "SAME")
        tf.identity(tf.nn.relu(tf.nn.bias_add(conv, tf.constant([0.1, 0.2, 0.3, 0.4]))),
                    name="y")

    graph_def = build(graph)
    log = PassLog()
    out = REGISTRY["grappler"](graph_def, PassContext(("x",), ("y",)), log)
    ops = [n.op for n in out.node]
    assert not any(op.startswith("_") for op in ops)
    assert ops.count("Conv2D") == 1 and "Mul" not in ops
    assert log.removed["folded_constants"] >= 1
    feed = {"x:0": np.random.default_rng(0).standard_normal((1, 8, 8, 2)).astype(np.float32)}
    np.testing.assert_allclose(run_graph(out, feed, "y:0"), run_graph(graph_def, feed, "y:0"),
                               atol=1e-6)


def test_bypass_keeps_ordering_through_removed_noops():
    def graph():
        a = tf.constant(1.0, name="a")
        b = tf.constant(2.0, name="b")
        with tf.control_dependencies([b]):
            noop = tf.no_op(name="gate")
        with tf.control_dependencies([noop]):
            tf.identity(a, name="c")

    out = bypass_nodes(build(graph), {"gate": None})
    c = next(n for n in out.node if n.name == "c")
    assert list(c.input) == ["a", "^b"]


def test_pipeline_reports_every_pass():
    graph_def = build(debug_graph)
    model = Model(graph_def, [TensorSpec("x", "float32", (None, 3))],
                  [TensorSpec("y", "float32", (None, 3))])
    out, reports = run_pipeline(model, ["strip_training", "prune", "grappler"])
    assert [r.name for r in reports] == ["strip_training", "prune", "grappler"]
    assert reports[0].nodes_before == len(graph_def.node)
    assert reports[-1].nodes_after == len(out.graph_def.node) < len(graph_def.node)


def test_older_objects_frozen_nests_and_leaves_the_collector_as_it_was():
    assert gc.get_freeze_count() == 0
    with older_objects_frozen():
        frozen = gc.get_freeze_count()
        with older_objects_frozen():
            pass
        assert gc.get_freeze_count() == frozen > 0  # the inner exit unfreezes nothing
    assert gc.get_freeze_count() == 0
    with pytest.raises(ValueError), older_objects_frozen():
        raise ValueError
    assert gc.get_freeze_count() == 0
    gc.freeze()  # a process that froze its own objects keeps them frozen
    try:
        kept = gc.get_freeze_count()
        with older_objects_frozen():
            pass
        assert gc.get_freeze_count() == kept
    finally:
        gc.unfreeze()


def test_large_blocks_are_mapped_for_a_large_source_only():
    # in a fresh interpreter: the setting lasts as long as the process
    code = ("import sys; from tfopt.memory import map_large_blocks; "
            "print(map_large_blocks(int(sys.argv[1]) - 1), map_large_blocks(int(sys.argv[1])))")
    found = subprocess.run([sys.executable, "-c", code, str(MAPPED_SOURCES)], check=True,
                           capture_output=True, text=True).stdout.split()
    assert found == ["False", "True" if sys.platform == "linux" else "False"]
