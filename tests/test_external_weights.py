"""Weights kept out of the frozen GraphDef (--large-weight-bytes): variables of the SavedModel
and of the TFLite converter's input, ONNX external data, model.pb inlined while it fits 2 GB.
The threshold is lowered so that small models take the path a 2 GB embedding takes."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from conftest import save_serving

import tfopt
from tfopt.exporters import pb as pb_exporter

THRESHOLD = 100_000  # bytes: the 1000 x 64 embedding (256 kB) is external, the rest inline


@pytest.fixture(scope="module")
def embedding_model(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    ids = keras.Input((6,), dtype="int32", name="ids")
    hidden = keras.layers.Embedding(1000, 64, name="embedding")(ids)
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling1D()(hidden))
    path = tmp_path_factory.mktemp("external") / "embedding"
    save_serving(keras.Model(ids, outputs), str(path))
    return path


def test_a_large_embedding_stays_out_of_the_graph_in_every_target(embedding_model, tmp_path):
    result = tfopt.freeze(embedding_model, tmp_path / "out", large_weight_bytes=THRESHOLD)
    assert result.exit_code == 0, [(a.format, a.error) for a in result.artifacts]
    assert result.frozen.external_weight_bytes == 1000 * 64 * 4
    assert result.frozen.constant_bytes < THRESHOLD

    onnx_path = tmp_path / "out" / "model.onnx"
    data = tmp_path / "out" / "model.onnx.data"
    assert data.stat().st_size == 1000 * 64 * 4
    proto = onnx.load(str(onnx_path), load_external_data=False)
    stored = {i.name: i.data_location for i in proto.graph.initializer}
    assert onnx.TensorProto.EXTERNAL in stored.values()
    assert [i.name for i in proto.graph.input] == ["ids"]  # the weight is no input
    onnx.checker.check_model(str(onnx_path), full_check=True)
    assert result.artifact("onnx").bytes == onnx_path.stat().st_size + data.stat().st_size

    variables = tmp_path / "out" / "saved_model" / "variables"
    assert sum(f.stat().st_size for f in variables.iterdir()) > 1000 * 64 * 4
    assert all(a.parity.passed and a.batch["verified"] == [1, 3] for a in result.artifacts)


def test_a_variable_read_by_resource_gather_becomes_a_gather(tmp_path):
    import tensorflow as tf

    class Lookup(tf.Module):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.table = tf.Variable(rng.standard_normal((500, 64)).astype(np.float32))
            self.proj = tf.Variable(rng.standard_normal((64, 500)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.int32, name="ids")])
        def __call__(self, ids):
            rows = tf.raw_ops.ResourceGather(resource=self.table.handle, indices=ids,
                                             dtype=tf.float32)  # tf_keras' embedding_lookup
            return {"scores": tf.reduce_sum(rows, 1) @ self.proj}

    module = Lookup()
    tf.saved_model.save(module, str(tmp_path / "lookup"),
                        signatures={"serving_default": module.__call__})
    result = tfopt.freeze(tmp_path / "lookup", tmp_path / "out", large_weight_bytes=THRESHOLD)
    assert result.exit_code == 0, [(a.format, a.error) for a in result.artifacts]
    assert result.frozen.external_weight_bytes == 2 * 500 * 64 * 4
    assert "ResourceGather" not in result.frozen.ops and "GatherV2" in result.frozen.ops


def test_pb_says_why_it_cannot_hold_the_weights(embedding_model, tmp_path, monkeypatch):
    monkeypatch.setattr(pb_exporter, "PROTOBUF_LIMIT", THRESHOLD)  # the 2 GB wall, scaled down
    result = tfopt.freeze(embedding_model, tmp_path / "default", large_weight_bytes=THRESHOLD)
    pb = result.artifact("pb")
    assert pb.status == "skipped" and result.exit_code == 0
    assert "protobuf's limit is 2 GB" in pb.error and "use saved_model" in pb.error
    assert not (tmp_path / "default" / "model.pb").exists()

    asked = tfopt.freeze(embedding_model, tmp_path / "asked", targets=["pb", "saved_model"],
                         large_weight_bytes=THRESHOLD)
    assert asked.artifact("pb").status == "failed" and asked.exit_code == 3
    assert asked.artifact("saved_model").status == "ok"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TFOPT_HUGE_TESTS"),
                    reason="2.1 GB of weights and ~12 GB of memory: set TFOPT_HUGE_TESTS=1")
def test_an_embedding_past_two_gigabytes_converts(tmp_path):
    import keras

    ids = keras.Input((4,), dtype="int32", name="ids")
    rows = 540_000  # x 1000 float32 = 2.16 GB: no GraphDef and no TensorProto can hold it
    hidden = keras.layers.Embedding(rows, 1000, embeddings_initializer="zeros")(ids)
    model = keras.Model(ids, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(
        hidden)))
    model.layers[1].embeddings.assign(np.random.default_rng(0).standard_normal(
        (rows, 1000)).astype(np.float32))
    save_serving(model, str(tmp_path / "huge"))
    del model
    result = tfopt.freeze(tmp_path / "huge", tmp_path / "out",
                          targets=["onnx", "saved_model", "tflite"])
    assert result.exit_code == 0, [(a.format, a.error) for a in result.artifacts]
    assert result.frozen.external_weight_bytes == rows * 1000 * 4
    assert (tmp_path / "out" / "model.onnx.data").stat().st_size == rows * 1000 * 4
