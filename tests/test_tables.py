"""Lookup tables freeze into the graph and convert to every target with default flags:
a tf.lookup.StaticHashTable module, a Keras 3 StringLookup model; TextVectorization's
string ops are named by the targets that cannot express them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import save_serving


@pytest.fixture(scope="module")
def table_models(tmp_path_factory):
    import keras
    import tensorflow as tf

    root = tmp_path_factory.mktemp("tables")

    class Table(tf.Module):
        def __init__(self):
            self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                ["apple", "pear", "plum"], [3, 5, 7], value_dtype=tf.int64), -1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="word")])
        def serve(self, word):
            return {"id": self.table.lookup(word)}

    module = Table()
    tf.saved_model.save(module, str(root / "hash_table"), signatures={"serving_default":
                                                                        module.serve})

    class Prices(tf.Module):  # int64 -> float32: no TFLite builtin holds it
        def __init__(self):
            self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant([1, 5, 9], tf.int64), tf.constant([10.0, 50.0, 90.0])), -1.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="item")])
        def serve(self, item):
            return {"price": self.table.lookup(item) * 2.0}

    prices = Prices()
    tf.saved_model.save(prices, str(root / "prices"), signatures={"serving_default":
                                                                    prices.serve})
    keras.utils.set_random_seed(0)
    words = keras.Input((3,), dtype="string", name="words")
    ids = keras.layers.StringLookup(vocabulary=["cat", "dog", "bird"])(words)
    scores = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Embedding(5, 4)(ids)))
    keras.Model(words, scores).save(root / "string_lookup.keras")

    text = keras.Input((1,), dtype="string", name="text")
    vectorize = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=5)
    vectorize.adapt(np.array(["the cat sat", "the dog ran fast"]))
    save_serving(keras.Model(text, vectorize(text)), str(root / "text_vectorization"))
    return root


@pytest.mark.parametrize("name", ["hash_table", "string_lookup.keras"])
def test_lookup_tables_convert_to_every_target(table_models, tmp_path, name):
    import onnx

    import tfopt
    from tfopt.exporters.tflite import op_names

    result = tfopt.freeze(table_models / name, tmp_path / "out")
    assert result.exit_code == 0, [(a.format, a.error or a.parity.reason)
                                   for a in result.artifacts]
    drawn = next(iter(result.verification["drawn"].values()))["drawn"]
    assert "keys of the lookup table" in drawn  # known words and an unknown one are checked
    proto = onnx.load(result.artifact("onnx").path)
    onnx.checker.check_model(proto, full_check=True)
    assert "LabelEncoder" in {n.op_type for n in proto.graph.node}
    tflite_ops = set(op_names(Path(result.artifact("tflite").path)))
    assert {"HASHTABLE", "HASHTABLE_FIND", "HASHTABLE_IMPORT"} <= tflite_ops


def test_table_lookup_is_exact_in_every_artifact(table_models, tmp_path):
    import tfopt

    result = tfopt.freeze(table_models / "hash_table", tmp_path / "out",
                          data={"word": np.array([b"pear", b"kiwi", b"plum"], dtype=object)})
    assert result.exit_code == 0
    for artifact in result.artifacts:
        assert artifact.parity.max_abs_err == 0.0


def test_text_vectorization_names_what_onnx_and_tflite_cannot_express(table_models, tmp_path):
    import tfopt

    result = tfopt.freeze(table_models / "text_vectorization", tmp_path / "out")
    status = {a.format: a.status for a in result.artifacts}
    assert status == {"onnx": "failed", "tflite": "failed", "pb": "ok", "saved_model": "ok"}
    assert "StaticRegexReplace" in result.artifact("onnx").error
    assert "FlexStaticRegexReplace" in result.artifact("tflite").error
    assert "pip cannot run" in result.artifact("tflite").error


def test_an_int_to_float_table_converts_to_onnx_and_names_the_tflite_limit(table_models,
                                                                          tmp_path):
    import tfopt

    result = tfopt.freeze(table_models / "prices", tmp_path / "out",
                          data={"item": np.array([1, 5, 7, 9], np.int64)})
    assert result.exit_code == 3
    for fmt in ("onnx", "pb", "saved_model"):
        assert result.artifact(fmt).parity.max_abs_err == 0.0, fmt
    tflite = result.artifact("tflite")
    assert tflite.status == "failed" and "int64 -> float32" in tflite.error
    assert "string -> int64 and int64 -> string tables only" in tflite.error
