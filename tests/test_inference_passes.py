"""The inference rewrites alone, on tiny hand-built graphs: control flow with a constant
predicate, training switches, dropout, training-mode batch norm, call-name clashes."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from test_passes import build, run_graph

from tfopt.errors import InputError
from tfopt.passes import REGISTRY, PassContext, PassLog

X = np.array([[-1.0, 0.5, 2.0]], np.float32)


def run_pass(name, graph_def, inputs=("x",), outputs=("y",), values=None):
    log = PassLog()
    out = REGISTRY[name](graph_def, PassContext(tuple(inputs), tuple(outputs), values or {}), log)
    return out, log


def cond_graph(version: str, pred: str):
    """y = cond(flag, x * 2, x - 1) with flag a Const or a Placeholder."""
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 3], name="x")
        flag = tf.constant(False, name="flag") if pred == "const" else \
            tf.compat.v1.placeholder(tf.bool, [], name="flag")
        out = tf.cond(flag, lambda: x * 2.0, lambda: x - 1.0)
        tf.identity(out, name="y")

    if version == "v1":
        tf.compat.v1.disable_control_flow_v2()
    try:
        return build(graph)
    finally:
        tf.compat.v1.enable_control_flow_v2()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fold_control_flow_keeps_the_taken_branch(version):
    graph_def = cond_graph(version, "const")
    out, log = run_pass("fold_control_flow", graph_def)
    ops = {n.op for n in out.node}
    assert not ops & {"Switch", "Merge", "If", "StatelessIf"}
    assert log.removed["control_flow"] >= 1
    if version == "v1":
        assert "Mul" not in ops and log.removed["dead_branches"] >= 1  # the x * 2 branch died
    np.testing.assert_allclose(run_graph(out, {"x:0": X}, "y:0"), X - 1.0)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fold_control_flow_skips_a_fed_predicate(version):
    graph_def = cond_graph(version, "placeholder")
    out, log = run_pass("fold_control_flow", graph_def, inputs=("x", "flag"))
    assert out is graph_def and not log.changes
    assert log.skipped and "predicate flag" in log.skipped[0]["reason"]


def test_freeze_placeholders_takes_defaults_and_given_values():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 3], name="x")
        scale = tf.compat.v1.placeholder_with_default(3.0, [], name="scale")
        shift = tf.compat.v1.placeholder(tf.float32, [], name="shift")
        tf.identity(x * scale + shift, name="y")

    out, log = run_pass("freeze_placeholders", build(graph), values={"shift": np.float32(1)})
    assert {n.name: n.op for n in out.node}["scale"] == "Const"
    assert {n.name: n.op for n in out.node}["shift"] == "Const"
    assert {c["node"] for c in log.changes} == {"scale", "shift"}
    np.testing.assert_allclose(run_graph(out, {"x:0": X}, "y:0"), X * 3 + 1)


def test_freeze_placeholders_keeps_inputs():
    def graph():
        x = tf.compat.v1.placeholder_with_default(X, [1, 3], name="x")
        tf.identity(x * 2.0, name="y")

    graph_def = build(graph)
    out, log = run_pass("freeze_placeholders", graph_def)
    assert out is graph_def and not log.changes


@pytest.mark.parametrize("form", ["rate", "keep_prob"])
def test_remove_dropout_makes_it_identity(form):
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 3], name="x")
        dropped = tf.nn.dropout(x, rate=0.4) if form == "rate" else \
            tf.compat.v1.nn.dropout(x, keep_prob=0.6)
        tf.identity(tf.nn.relu(dropped), name="y")

    out, log = run_pass("remove_dropout", build(graph))
    assert not {n.op for n in out.node} & {"RandomUniform", "SelectV2", "Mul", "RealDiv"}
    assert log.removed["dropout"] == 1
    np.testing.assert_allclose(run_graph(out, {"x:0": X}, "y:0"), np.maximum(X, 0))


def test_remove_dropout_leaves_other_random_ops():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 3], name="x")
        noise = tf.random.normal([1, 3])  # sampling, e.g. a VAE: not dropout
        tf.identity(x * noise, name="y")

    graph_def = build(graph)
    out, log = run_pass("remove_dropout", graph_def)
    assert out is graph_def and not log.changes


def test_training_batch_norm_uses_the_updated_moving_statistics():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [2, 2, 2, 2], name="x")
        mean = tf.compat.v1.get_variable("mean", initializer=tf.constant([1.0, -1.0]),
                                         use_resource=True)
        var = tf.compat.v1.get_variable("var", initializer=tf.constant([4.0, 0.25]),
                                        use_resource=True)
        y, batch_mean, batch_var = tf.compat.v1.nn.fused_batch_norm(
            x, tf.ones([2]), tf.zeros([2]), epsilon=0.0, is_training=True)
        tf.compat.v1.assign_sub(mean, (mean - batch_mean) * 0.1)
        tf.compat.v1.assign_sub(var, (var - batch_var) * 0.1)
        tf.identity(y, name="y")

    out, log = run_pass("training_batch_norm", build(graph))
    assert [(c["mean"], c["variance"]) for c in log.changes] == [("mean", "var")]
    norm = next(n for n in out.node if n.op.startswith("FusedBatchNorm"))
    assert not norm.attr["is_training"].b
    graph_ = tf.Graph()
    with graph_.as_default():
        tf.compat.v1.import_graph_def(out, name="")
        with tf.compat.v1.Session() as session:
            session.run(["mean/Assign", "var/Assign"])
            x = np.random.default_rng(0).standard_normal((2, 2, 2, 2)).astype(np.float32)
            y = session.run("y:0", {"x:0": x})
    np.testing.assert_allclose(y, (x - [1.0, -1.0]) / np.sqrt([4.0, 0.25]), rtol=1e-5)


def test_training_batch_norm_without_updates_names_the_node():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [2, 2, 2, 2], name="x")
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, tf.ones([2]), tf.zeros([2]),
                                                   is_training=True, name="bn")
        tf.identity(y, name="y")

    with pytest.raises(InputError, match="batch norm bn runs in training mode"):
        run_pass("training_batch_norm", build(graph))


def test_grappler_inlines_a_call_whose_name_prefixes_other_nodes():
    # an If folded to a call keeps tf.cond v2's name; its body's "Identity" would become
    # "cond/Identity", which exists already: without the rename, Grappler aborts the process
    graph_def = cond_graph("v2", "const")
    folded, _ = run_pass("fold_control_flow", graph_def)
    assert any(n.name.startswith("cond/") for n in folded.node)
    out, _ = run_pass("grappler", folded)
    assert not {n.op for n in out.node} & {"PartitionedCall", "StatefulPartitionedCall"}
    np.testing.assert_allclose(run_graph(out, {"x:0": X}, "y:0"), X - 1.0)
