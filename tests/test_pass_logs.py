"""Every registered TF pass reports what it changed and what it skipped, with the reason.

The passes' own test files check most of it; this file fills the gaps and holds the list
that proves each pass is covered (a new pass without a log test fails here)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from test_inference_passes import run_pass
from test_passes import build, run_graph

from tfopt.passes import REGISTRY

X = np.array([[-1.0, 0.5, 2.0]], np.float32)

# pass -> the tests that assert its change and skip entries; passes that match nothing they
# could decline (prune, grappler, erfc_to_erf, training_batch_norm, which refuses instead)
# are covered for their changes
COVERED = {
    "strip_training": ["test_passes.py::test_strip_training_skips_a_sink_whose_output_is_used"],
    "prune": ["test_passes.py::test_prune_classifies_what_it_drops"],
    "fold_control_flow": ["test_inference_passes.py::test_fold_control_flow_skips_a_fed_predicate"],
    "grappler": ["test_passes.py::test_grappler_folds_constants_and_never_fuses"],
    "fold_scale_shift": ["test_fold_scale_shift.py::test_conv_output_read_twice_is_skipped"],
    "fold_pad": ["test_fold_pad_dedupe.py::test_pad_that_cannot_fold_is_skipped_with_its_reason"],
    "dedupe": ["test_pass_logs.py::test_dedupe_says_why_it_keeps_identical_random_ops"],
    "freeze_placeholders": ["test_pass_logs.py::test_freeze_placeholders_says_what_it_keeps"],
    "training_batch_norm": [
        "test_inference_passes.py::test_training_batch_norm_uses_the_updated_moving_statistics",
        "test_inference_passes.py::test_training_batch_norm_without_updates_names_the_node"],
    "remove_dropout": ["test_pass_logs.py::test_remove_dropout_skips_a_masked_constant"],
    "inline_xla_calls": ["test_pass_logs.py::test_inline_xla_calls_inlines_a_jit_function"],
    "erfc_to_erf": ["test_pass_logs.py::test_erfc_becomes_one_minus_erf"],
    "strip_augmentation": [
        "test_pass_logs.py::test_strip_augmentation_keeps_a_draw_that_is_not_a_layer"],
    "compute_in_fp32": ["test_pass_logs.py::test_compute_in_fp32_lifts_float16_only_when_asked"],
    "bfloat16_in_fp32": ["test_pass_logs.py::test_compute_in_fp32_lifts_float16_only_when_asked"],
    "fused_nms_to_op": [
        "test_detection.py::test_batched_padded_nms_is_inlined_for_onnx_and_says_why",
        "test_detection.py::test_padded_nms_keeps_its_fusion_marker"],
    "unmark_fused_calls": [
        "test_detection.py::test_batched_padded_nms_is_inlined_for_onnx_and_says_why"],
    "combined_nms": ["test_pass_logs.py::test_combined_nms_decomposes_what_it_can"],
    "combined_nms_per_class_boxes": [
        "test_pass_logs.py::test_combined_nms_decomposes_what_it_can"],
    "nudge_fake_quant": ["test_pass_logs.py::test_fake_quant_passes_say_what_they_rewrote"],
    "fake_quant_for_onnx": ["test_pass_logs.py::test_fake_quant_passes_say_what_they_rewrote"],
    "dynamic_tensor_lists": [
        "test_pass_logs.py::test_dynamic_tensor_lists_take_the_batch_from_the_input"],
}


def test_every_registered_pass_has_a_log_test():
    from pathlib import Path

    assert set(COVERED) == set(REGISTRY)
    here = Path(__file__).parent
    for tests in COVERED.values():
        for test in tests:
            file, name = test.split("::")
            assert f"def {name}(" in (here / file).read_text(), test


def test_dedupe_says_why_it_keeps_identical_random_ops():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 3], name="x")
        a = tf.random.uniform([1, 3], seed=1, name="a")
        b = tf.random.uniform([1, 3], seed=1, name="b")
        tf.identity(x + a + b, name="y")

    out, log = run_pass("dedupe", build(graph))
    assert [n.op for n in out.node].count("RandomUniform") == 2
    assert any("stateful" in s["reason"] for s in log.skipped)


def test_freeze_placeholders_says_what_it_keeps():
    def graph():
        x = tf.compat.v1.placeholder_with_default(X, [1, 3], name="x")
        shift = tf.compat.v1.placeholder(tf.float32, [], name="shift")
        tf.identity(x + shift, name="y")

    graph_def = build(graph)
    out, log = run_pass("freeze_placeholders", graph_def)
    assert out is graph_def and not log.changes
    reasons = {s["node"]: s["reason"] for s in log.skipped}
    assert "signature input" in reasons["x"]
    assert "--freeze-placeholder shift=VALUE" in reasons["shift"]


def test_remove_dropout_skips_a_masked_constant():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 3], name="x")
        noise = tf.nn.dropout(tf.constant(X), rate=0.5)  # a random initializer, not a layer
        tf.identity(x + noise, name="y")

    graph_def = build(graph)
    out, log = run_pass("remove_dropout", graph_def)
    assert out is graph_def and not log.changes
    assert "constant" in log.skipped[0]["reason"]


def test_inline_xla_calls_inlines_a_jit_function():
    @tf.function(jit_compile=True)
    def double(t):
        return t * 2.0

    def graph():  # Grappler leaves graphs under 4 nodes alone: add a few
        x = tf.compat.v1.placeholder(tf.float32, [1, 3], name="x")
        tf.identity(tf.nn.relu(double(x)) + 1.0, name="y")

    graph_def = build(graph)
    calls = [n for n in graph_def.node if n.op.endswith("PartitionedCall")]
    assert calls and "_XlaMustCompile" in calls[0].attr
    out, log = run_pass("inline_xla_calls", graph_def)
    assert not [n for n in out.node if n.op.endswith("PartitionedCall")]
    assert log.changes[0]["action"] == "inlined" and "_XlaMustCompile" in log.changes[0]["unmarked"]
    np.testing.assert_allclose(run_graph(out, {"x:0": X}, "y:0"), np.maximum(X * 2, 0) + 1)


def test_erfc_becomes_one_minus_erf():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 3], name="x")
        tf.identity(tf.math.erfc(x), name="y")

    out, log = run_pass("erfc_to_erf", build(graph))
    assert "Erfc" not in {n.op for n in out.node} and len(log.changes) == 1
    np.testing.assert_allclose(run_graph(out, {"x:0": X}, "y:0"),
                               run_graph(build(graph), {"x:0": X}, "y:0"), atol=1e-6)


def test_dynamic_tensor_lists_take_the_batch_from_the_input():
    def graph():  # two per-row lists, as a Keras RNN builds them; one cannot be given a batch
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        rows = tf.raw_ops.TensorListReserve(element_shape=[-1, 3], num_elements=2,
                                            element_dtype=tf.float32, name="rows")
        ragged = tf.raw_ops.TensorListReserve(element_shape=[-1, -1], num_elements=1,
                                              element_dtype=tf.float32, name="ragged")
        rows = tf.raw_ops.TensorListSetItem(input_handle=rows, index=0, item=x)
        rows = tf.raw_ops.TensorListSetItem(input_handle=rows, index=1, item=x * 2.0)
        ragged = tf.raw_ops.TensorListSetItem(input_handle=ragged, index=0, item=x)
        stacked = tf.raw_ops.TensorListStack(input_handle=rows, element_shape=[-1, 3],
                                             element_dtype=tf.float32)
        tf.identity(tf.reduce_sum(stacked, 0) + tf.raw_ops.TensorListStack(
            input_handle=ragged, element_shape=[-1, -1], element_dtype=tf.float32)[0], name="y")

    graph_def = build(graph)
    out, log = run_pass("dynamic_tensor_lists", graph_def)
    assert [c["node"] for c in log.changes] == ["rows"]
    assert log.changes[0]["element_shape"] == [-1, 3] and log.changes[0]["batch_from"] == "x"
    assert log.skipped == [{"node": "ragged", "reason": "element shape [-1, -1] has unknown "
                                                        "dimensions beyond the batch"}]
    rows = next(n for n in out.node if n.name == "rows")
    assert next(n for n in out.node if n.name == rows.input[0]).op == "ConcatV2"
    for batch in (1, 4):
        feed = {"x:0": np.arange(batch * 3, dtype=np.float32).reshape(batch, 3)}
        np.testing.assert_allclose(run_graph(out, feed, "y:0"), feed["x:0"] * 4)
    _, log = run_pass("dynamic_tensor_lists", graph_def, inputs=())
    assert {s["reason"] for s in log.skipped} >= {
        "no input has an unknown batch dimension to take it from"}


def test_strip_augmentation_keeps_a_draw_that_is_not_a_layer():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        z = tf.compat.v1.placeholder(tf.float32, [None, 3], name="z")
        with tf.name_scope("noise"):  # an active GaussianNoise: one tensor in, one out
            noisy = x + tf.random.normal(tf.shape(x), stddev=0.1)
        with tf.name_scope("sample"):  # a draw that mixes two tensors: the model's own
            mixed = noisy * tf.random.uniform(tf.shape(x)) + z
        tf.identity(mixed, name="y")

    out, log = run_pass("strip_augmentation", build(graph), inputs=("x", "z"))
    assert [c["layer"] for c in log.changes] == ["noise"]
    assert log.changes[0]["becomes"] == "identity" and log.removed == {"augmentation": 1}
    (skip,) = log.skipped
    assert skip["node"].startswith("sample/") and "takes 2 tensor(s)" in skip["reason"]
    y = run_graph(out, {"x:0": X, "z:0": X}, "y:0")
    assert {n.op for n in out.node} & {"RandomStandardNormal"} == set()
    assert y.shape == X.shape


def test_compute_in_fp32_lifts_float16_only_when_asked():
    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [1, 3], name="x")
        w = tf.constant(np.eye(3, dtype=np.float16) * 1.5)
        y = tf.matmul(tf.cast(x, tf.float16), w)
        tf.identity(y, name="y")  # a float16 output, as a mixed-precision Dense gives

    graph_def = build(graph)
    same, log = run_pass("bfloat16_in_fp32", graph_def)
    assert same is graph_def and not log.changes
    out, log = run_pass("compute_in_fp32", graph_def)
    (change,) = log.changes
    assert change["compute"] == "float16" and change["nodes"] >= 3
    types = {n.op: n.attr["T"].type for n in out.node if n.op in ("MatMul", "Identity")}
    assert types["MatMul"] == tf.float32.as_datatype_enum
    y = run_graph(out, {"x:0": X}, "y:0")
    assert y.dtype == np.float16  # the signature keeps its dtype
    np.testing.assert_allclose(y, (X * 1.5).astype(np.float16))


def test_combined_nms_decomposes_what_it_can():
    def graph():
        boxes = tf.compat.v1.placeholder(tf.float32, [1, 10, 1, 4], name="x")
        scores = tf.compat.v1.placeholder(tf.float32, [1, 10, 2], name="scores")
        limit = tf.compat.v1.placeholder(tf.int32, [], name="limit")
        fixed = tf.image.combined_non_max_suppression(boxes, scores, 3, 5, name="fixed")
        fed = tf.image.combined_non_max_suppression(boxes, scores, 3, limit, name="fed")
        tf.identity(fixed[1] + tf.reduce_sum(fed[1]), name="y")

    graph_def = build(graph)
    inputs = ("x", "scores", "limit")
    out, log = run_pass("combined_nms", graph_def, inputs=inputs)
    (change,) = log.changes
    assert change["suppressions"] == 2
    (skip,) = log.skipped
    assert "max_total_size is computed" in skip["reason"]
    assert [n.op for n in out.node].count("NonMaxSuppressionV4") == 2
    _, log = run_pass("combined_nms_per_class_boxes", graph_def, inputs=inputs)
    assert not log.changes and any("share their boxes" in s["reason"] for s in log.skipped)


def test_fake_quant_passes_say_what_they_rewrote():
    quant = tf.quantization

    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [2, 3], name="x")
        low = tf.reduce_min(x, name="low")  # a computed range: neither pass can read it
        a = quant.fake_quant_with_min_max_vars(x, low, tf.constant(1.0), name="computed")
        b = quant.fake_quant_with_min_max_vars(a, tf.constant(-8.0), tf.constant(8.0),
                                               narrow_range=True, name="narrow")
        c = quant.fake_quant_with_min_max_vars_per_channel(
            b, tf.constant([-1.0] * 3), tf.constant([1.0] * 3), name="per_channel")
        w = quant.fake_quant_with_min_max_vars(tf.constant(np.eye(3, dtype=np.float32)),
                                               tf.constant(-1.0), tf.constant(1.0),
                                               narrow_range=True, name="weights")
        tf.identity(tf.matmul(c, w), name="y")

    nudged, log = run_pass("nudge_fake_quant", build(graph))
    # narrow [-8, 8] and [-1, 1] put zero on the grid already; full-range [-1, 1] does not
    assert {c["node"] for c in log.changes} == {"per_channel"}
    assert [s["node"] for s in log.skipped] == ["computed"]
    _, log = run_pass("fake_quant_for_onnx", nudged)
    actions = {c["node"]: c["action"] for c in log.changes}
    assert actions == {"narrow": "widened", "weights": "rewritten"}, log.changes
    reasons = {s["node"]: s["reason"] for s in log.skipped}
    assert "computed" in reasons["computed"] and "per-tensor" in reasons["per_channel"]
