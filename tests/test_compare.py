"""tfopt compare: existing artifacts, tfopt's and other tools', verified against their source
on the conversion's inputs and rules; pairing by name, position and channels-first layout."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tfopt
from tfopt.errors import InputError


def compare_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfopt", "compare", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


BIAS = np.array([0.25, -0.5, 0.75, 0.125, -0.375], np.float32)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    """A small channels-last CNN as a tf.Module SavedModel (every converter reads it)."""
    import tensorflow as tf

    rng = np.random.default_rng(7)

    class Cnn(tf.Module):
        def __init__(self):
            self.kernel = tf.Variable(rng.normal(0, 0.3, (3, 3, 3, 8)).astype(np.float32))
            self.weights = tf.Variable(rng.normal(0, 0.3, (8, 5)).astype(np.float32))
            self.bias = tf.Variable(BIAS)

        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32,
                                                    name="image")])
        def serve(self, image):
            h = tf.nn.relu(tf.nn.conv2d(image, self.kernel, 1, "SAME"))
            return {"scores": tf.matmul(tf.reduce_mean(h, [1, 2]), self.weights) + self.bias}

    path = tmp_path_factory.mktemp("cnn") / "model"
    module = Cnn()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="module")
def artifacts(cnn, tmp_path_factory) -> dict[str, Path]:
    """tfopt's four artifacts, tf2onnx's ONNX, the stock converter's TFLite, a
    channels-first ONNX, and tfopt's ONNX and TFLite with one bias value changed."""
    import onnx
    import tensorflow as tf

    root = tmp_path_factory.mktemp("artifacts")
    result = tfopt.freeze(cnn, root / "tfopt")
    assert result.exit_code == 0
    made = {fmt: Path(result.artifact(fmt).path) for fmt in ("onnx", "tflite", "pb",
                                                             "saved_model")}
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(cnn),
                    "--output", str(root / "tf2onnx.onnx"), "--opset", "17"], check=True,
                   capture_output=True)
    made["tf2onnx"] = root / "tf2onnx.onnx"
    (root / "stock.tflite").write_bytes(
        tf.lite.TFLiteConverter.from_saved_model(str(cnn)).convert())
    made["stock"] = root / "stock.tflite"

    proto = onnx.load(str(made["tf2onnx"]))  # NCHW in front of an NHWC graph
    graph = proto.graph
    nhwc = graph.input[0]
    dims = [d.dim_param or d.dim_value for d in nhwc.type.tensor_type.shape.dim]
    graph.node.insert(0, onnx.helper.make_node("Transpose", ["pixels"], [nhwc.name],
                                               perm=[0, 2, 3, 1]))
    graph.input.remove(nhwc)
    graph.input.insert(0, onnx.helper.make_tensor_value_info(
        "pixels", onnx.TensorProto.FLOAT, [dims[0], dims[3], dims[1], dims[2]]))
    onnx.save(proto, str(root / "nchw.onnx"))
    made["nchw"] = root / "nchw.onnx"

    changed = BIAS.copy()
    changed[2] += 3.0  # one weight of one layer
    for fmt, suffix in (("onnx", ".onnx"), ("tflite", ".tflite")):
        data = made[fmt].read_bytes()
        assert data.count(BIAS.tobytes()) == 1
        made[f"corrupt_{fmt}"] = root / f"corrupt{suffix}"
        made[f"corrupt_{fmt}"].write_bytes(data.replace(BIAS.tobytes(), changed.tobytes()))
    return made


def test_tfopts_own_artifacts_match(cnn, artifacts, tmp_path):
    result = tfopt.compare(cnn, [artifacts[f] for f in ("onnx", "tflite", "pb",
                                                         "saved_model")], tmp_path / "r")
    assert result.exit_code == 0
    assert [(a.format, a.status, a.path) for a in result.artifacts] == [
        (f, "ok", str(artifacts[f])) for f in ("onnx", "tflite", "pb", "saved_model")]
    assert all(a.batch["verified"] == [1, 3] for a in result.artifacts)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["exit_code"] == 0 and (tmp_path / "r" / "report.html").is_file()
    assert report["verification"]["inputs"] == "drawn by tfopt"


def test_other_tools_artifacts_match_and_channels_first_is_paired(cnn, artifacts, tmp_path):
    """tf2onnx names the input 'image' and the output 'scores' too, the stock converter
    keeps the signature; the NCHW model is fed transposed and says so."""
    run = compare_cli(cnn, artifacts["tf2onnx"], artifacts["stock"], artifacts["nchw"],
                      "-o", tmp_path / "r")
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    rows = [(a["format"], a["status"], a["precision"]) for a in report["artifacts"]]
    assert rows == [("onnx", "ok", "fp32"), ("tflite", "ok", "fp32"), ("onnx", "ok", "fp32")]
    assert report["artifacts"][2]["note"] == (
        "nchw.onnx; channels-first layout paired by transposing input 'image'")
    assert max(a["parity"]["max_abs_err"] for a in report["artifacts"]) < 1e-5
    assert "nchw.onnx" in run.stdout
    traced = compare_cli(cnn, artifacts["tf2onnx"], artifacts["stock"], "--trace",
                         "-o", tmp_path / "traced")
    assert traced.returncode == 0, traced.stderr
    report = json.loads((tmp_path / "traced" / "report.json").read_text())
    for artifact in report["artifacts"]:  # paired by the TF names both keep; no false alarm
        assert artifact["divergence"]["op"] is None and artifact["divergence"]["compared"] >= 3


def test_a_changed_weight_is_found_in_onnx_and_tflite(cnn, artifacts, tmp_path):
    run = compare_cli(cnn, artifacts["corrupt_onnx"], artifacts["corrupt_tflite"],
                      artifacts["onnx"], "-o", tmp_path / "r")
    assert run.returncode == 4, run.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [a["status"] for a in report["artifacts"]] == ["differs", "differs", "ok"]
    for artifact in report["artifacts"][:2]:
        assert 2.9 < artifact["parity"]["max_abs_err"] < 3.1  # the 3.0 added to one bias
    lines = run.stderr.strip().splitlines()
    assert lines[0].startswith(f"tfopt: {artifacts['corrupt_onnx']} outputs differ from the "
                               "original: output 'scores': max abs error")
    assert len(lines) == 2 and "Traceback" not in run.stderr
    # the first divergent op is the layer's bias add, whose inputs still match
    for line, artifact in zip(lines, report["artifacts"][:2]):
        divergence = artifact["divergence"]
        assert divergence["op_type"] in ("AddV2", "Add", "BiasAdd"), divergence
        assert divergence["inputs_match"] is True and 2.9 < divergence["max_abs_error"] < 3.1
        assert f"first divergence: op '{divergence['op']}'" in line
    assert report["artifacts"][2]["divergence"] is None  # passed, and --trace not given


def test_artifacts_that_cannot_be_paired_are_refused(cnn, artifacts, tmp_path):
    other = Path(__file__).resolve().parent.parent / "saved_models" / "debug_module"
    with pytest.raises(InputError, match=r"debug_module's input 'x' has shape \[\?, 8\], and "
                                         r"the model's 'image' is fed \[1, 16, 16, 3\]"):
        tfopt.compare(cnn, [other], tmp_path / "a")
    with pytest.raises(InputError, match=r"variables is not a \.onnx, \.pb, \.tflite, \.xml "
                                         "file or a directory holding saved_model\\.pb"):
        tfopt.compare(cnn, [cnn / "variables"], tmp_path / "b")
    run = compare_cli(cnn, tmp_path / "missing.onnx", "-o", tmp_path / "c")
    assert run.returncode == 2
    assert run.stderr.strip() == f"tfopt: error: artifact {tmp_path / 'missing.onnx'} does " \
                                 "not exist"
    assert not any(tmp_path.iterdir())


def test_an_earlier_int8_onnx_is_traced_under_its_short_names(cnn, tmp_path):
    import onnx

    made = tfopt.freeze(cnn, tmp_path / "int8", targets=["onnx"], quantize="int8",
                        calibration="random")
    path = Path(made.artifact("onnx").path)
    own = made.artifact("onnx").divergence
    proto = onnx.load(str(path))
    assert any(":" not in n.output[0] and "/" not in n.output[0] for n in proto.graph.node)
    result = tfopt.compare(cnn, [path], tmp_path / "compared", trace=True)
    traced = result.artifacts[0].divergence
    assert traced["paired"] == own["paired"] >= 3, (traced, own)
    # the same layers (ranked on other inputs: compare draws its own)
    assert {w["op"] for w in traced["worst"]} == {w["op"] for w in own["worst"]}
    del proto.metadata_props[:]  # without the names tfopt kept: nothing inside pairs
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    bare = tfopt.compare(cnn, [tmp_path / "bare.onnx"], tmp_path / "bare", trace=True)
    assert bare.artifacts[0].divergence["paired"] < own["paired"]
