"""The openvino target: an IR converted from tfopt's frozen graph by OpenVINO's TF frontend,
run by its CPU plugin, verified and reported like every other artifact; fp16, NNCF int8,
tfopt compare of an IR OpenVINO made from the original, and the optional extra."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tf1_models import build_training_graph, save_saved_model

import tfopt
from tfopt.commands import main

pytest.importorskip("openvino")
SAMPLE = Path(__file__).parent.parent / "saved_models" / "keras_cnn"


@pytest.fixture(scope="module")
def cnn_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("openvino")
    return root, {mode: tfopt.freeze(SAMPLE, root / mode, targets=["openvino", "onnx"],
                                     quantize=mode, trace=True)
                  for mode in ("none", "fp16")}


def test_the_ir_converts_runs_and_is_reported_like_every_artifact(cnn_runs):
    root, runs = cnn_runs
    result = runs["none"]
    assert result.exit_code == 0, [a.parity.reason or a.error for a in result.artifacts]
    ir = result.artifact("openvino")
    assert ir.parity.passed and ir.precision == "fp32"
    assert (root / "none" / "model.xml").is_file() and (root / "none" / "model.bin").is_file()
    weights = (root / "none" / "model.bin").stat().st_size
    assert ir.bytes == (root / "none" / "model.xml").stat().st_size + weights
    assert ir.ops.get("Convolution") and "Parameter" not in ir.ops
    assert ir.divergence["paired"] >= 3 and ir.divergence["op"] is None
    report = json.loads((root / "none" / "report.json").read_text())
    assert report["versions"]["openvino"]
    assert [a["format"] for a in report["artifacts"]] == ["openvino", "onnx"]


def test_fp16_compresses_the_weights(cnn_runs):
    root, runs = cnn_runs
    fp32, fp16 = runs["none"].artifact("openvino"), runs["fp16"].artifact("openvino")
    assert fp16.precision == "fp16" and fp16.parity.passed and fp16.bytes < fp32.bytes
    weights = {mode: (root / mode / "model.bin").stat().st_size for mode in runs}
    assert weights["fp16"] < 0.6 * weights["none"], weights


def test_int8_is_nncf_post_training_quantization(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
    import digits

    saved, info = digits.train(tmp_path / "digits")
    result = tfopt.freeze(saved, tmp_path / "int8", targets=["openvino"], quantize="int8",
                          calibration=info["calibration"], eval_data=info["eval"])
    ir = result.artifact("openvino")
    assert result.exit_code == 0 and ir.precision == "int8", ir.parity.reason
    assert ir.ops.get("FakeQuantize", 0) >= 3
    assert result.reference_accuracy - ir.parity.accuracy <= 0.01


def test_a_tf1_training_graph_and_a_table_lookup_convert(tmp_path):
    import tensorflow as tf

    graph, session, handles = build_training_graph()
    save_saved_model(graph, session, handles, tmp_path / "tf1")
    session.close()

    class Prices(tf.Module):
        def __init__(self):
            self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant([3, 7, 9], tf.int64), tf.constant([1.5, 2.5, 3.5])), 0.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="item")])
        def serve(self, item):
            return {"price": self.table.lookup(item) * 2.0}

    prices = Prices()
    tf.saved_model.save(prices, str(tmp_path / "prices"),
                        signatures={"serving_default": prices.serve})
    for source in ("tf1", "prices"):
        result = tfopt.freeze(tmp_path / source, tmp_path / f"out_{source}",
                              targets=["openvino"])
        assert result.exit_code == 0, (source, result.artifact("openvino").error)


def test_an_ir_openvino_made_from_the_original_is_compared(tmp_path):
    import openvino

    openvino.save_model(openvino.convert_model(str(SAMPLE)), str(tmp_path / "ovc.xml"))
    result = tfopt.compare(SAMPLE, [tmp_path / "ovc.xml"], tmp_path / "compared")
    assert result.exit_code == 0, result.artifacts[0].parity.reason
    assert result.artifacts[0].format == "openvino"
    assert result.artifacts[0].bytes > (tmp_path / "ovc.bin").stat().st_size


def test_an_op_openvino_cannot_convert_is_named(tmp_path, capsys):
    import tensorflow as tf

    class Words(tf.Module):
        def __init__(self):
            self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(["a", "b"]), tf.constant([1, 2], tf.int64)), -1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="word")])
        def serve(self, word):
            return {"id": self.table.lookup(word)}

    words = Words()
    tf.saved_model.save(words, str(tmp_path / "words"),
                        signatures={"serving_default": words.serve})
    assert main([str(tmp_path / "words"), "-o", str(tmp_path / "out"), "--to",
                 "openvino,onnx"]) == 3
    err = capsys.readouterr().err
    assert "cannot convert ops HashTableV2, LookupTableFindV2" in err


def test_a_target_whose_extra_is_missing_is_a_usage_error(monkeypatch, tmp_path, capsys):
    from tfopt.exporters import EXPORTERS, openvino

    class Absent:  # the openvino exporter as seen where its library is not installed
        def __getattr__(self, name):
            return ("no_such_module_here", "openvino") if name == "EXTRA" else \
                getattr(openvino, name)

    monkeypatch.setitem(EXPORTERS, "openvino", Absent())
    assert main([str(SAMPLE), "-o", str(tmp_path / "out"), "--to", "openvino"]) == 2
    assert "pip install 'tfopt[openvino]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_auto_tries_only_the_modes_openvino_builds(tmp_path):
    result = tfopt.freeze(SAMPLE, tmp_path / "auto", targets=["openvino"], quantize="auto",
                          calibration="random")
    tried = {t["precision"] for t in result.artifact("openvino").auto["tried"]}
    assert tried <= {"fp32", "fp16", "int8"} and {"fp32", "fp16"} <= tried, tried


def test_weights_kept_outside_the_graph_become_constants_of_the_ir(tmp_path):
    import keras
    from conftest import save_serving

    keras.utils.set_random_seed(0)
    ids = keras.Input((6,), dtype="int32", name="ids")
    hidden = keras.layers.Embedding(1000, 64, name="embedding")(ids)
    save_serving(keras.Model(ids, keras.layers.Dense(4)(
        keras.layers.GlobalAveragePooling1D()(hidden))), str(tmp_path / "embedding"))
    result = tfopt.freeze(tmp_path / "embedding", tmp_path / "out", targets=["openvino"],
                          large_weight_bytes=100_000)  # the 256 kB embedding stays external
    ir = result.artifact("openvino")
    assert result.frozen.external_weight_bytes == 1000 * 64 * 4
    assert result.exit_code == 0 and ir.parity.passed, ir.error
    assert (tmp_path / "out" / "model.bin").stat().st_size > 1000 * 64 * 4
    import openvino

    read = openvino.Core().read_model(tmp_path / "out" / "model.xml")
    assert [sorted(p.output(0).get_names()) for p in read.get_parameters()] == [["ids"]]
