"""Where an artifact diverges: a weight changed in one layer of a Keras CNN is named as that
layer's op in tfopt's ONNX, TFLite and .pb, the inputs of that op still matching; a clean
conversion traced with --trace names no op; the report draws the per-op errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from zoo import randomize

LAYERS = ("block1_conv", "block2_conv", "block3_conv")


def _cnn(keras):
    inputs = keras.Input((24, 24, 3), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu", name=LAYERS[0])(inputs)
    x = keras.layers.BatchNormalization(name="block1_bn")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name=LAYERS[1])(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name=LAYERS[2])(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


@pytest.fixture(scope="module")
def source_and_changed(tmp_path_factory):
    """The CNN, and tfopt's artifacts of a copy with one kernel value of block2 changed."""
    import keras
    from zoo import save_serving

    import tfopt

    keras.utils.set_random_seed(0)
    model = _cnn(keras)
    randomize(model)
    root = tmp_path_factory.mktemp("trace")
    save_serving(model, root / "source")
    kernel = model.get_layer(LAYERS[1]).kernel
    value = np.asarray(kernel)
    value[1, 1, 3, 5] += 0.5
    kernel.assign(value)
    save_serving(model, root / "changed")
    made = tfopt.freeze(root / "changed", root / "artifacts", targets=["onnx", "tflite", "pb"])
    assert made.exit_code == 0
    return root


def test_a_changed_kernel_is_named_in_every_format(source_and_changed, tmp_path):
    import tfopt

    root = source_and_changed
    paths = [root / "artifacts" / name for name in ("model.onnx", "model.tflite", "model.pb")]
    result = tfopt.compare(root / "source", paths, tmp_path / "out")
    assert result.exit_code == 4
    for artifact in result.artifacts:
        divergence = artifact.divergence
        assert artifact.status == "differs" and divergence["op"], (artifact.format, divergence)
        assert f"/{LAYERS[1]}" in divergence["op"], (artifact.format, divergence["op"])
        assert divergence["inputs_match"] is True
        assert divergence["max_abs_error"] > 100 * divergence["tolerance"]
        assert f"first divergence: op '{divergence['op']}'" in artifact.parity.reason
        # every traced op before it matches, and it is charted
        chart = divergence["chart"]
        first = [op for op, _ in chart].index(divergence["op"]) if any(
            op == divergence["op"] for op, _ in chart) else None
        ratios = [ratio for _, ratio in chart]
        assert first is None or max(ratios[:first], default=0) <= 1, chart
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count('id="chart-divergence-') == 3 and "First divergence: op" in page


def test_a_clean_conversion_traces_to_no_divergence(source_and_changed, tmp_path):
    import tfopt

    result = tfopt.freeze(source_and_changed / "source", tmp_path / "out", trace=True)
    assert result.exit_code == 0
    by_format = {a.format: a.divergence for a in result.artifacts}
    for fmt in ("onnx", "tflite", "pb"):
        assert by_format[fmt]["op"] is None and by_format[fmt]["compared"] >= 5, \
            (fmt, by_format[fmt])
    assert "SavedModel's intermediate tensors" in by_format["saved_model"]["error"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["artifacts"][0]["divergence"]["traced"] >= by_format["onnx"]["compared"]


def test_another_tools_artifact_traces_clean_where_tfopt_folded(tmp_path):
    """tf2onnx leaves a depthwise conv's batch norm unfolded, so its conv output matches
    the original before tfopt's fold_scale_shift scaled it under the same name."""
    import subprocess
    import sys

    import keras
    from zoo import save_serving

    import tfopt

    keras.utils.set_random_seed(1)
    inputs = keras.Input((24, 24, 3), name="image")
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, name="depthwise")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(x))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, name="conv2")(x))
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    randomize(model)
    save_serving(model, tmp_path / "source")
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model",
                    str(tmp_path / "source"), "--output", str(tmp_path / "peer.onnx"),
                    "--opset", "17"], check=True, capture_output=True)
    result = tfopt.compare(tmp_path / "source", [tmp_path / "peer.onnx"], tmp_path / "out",
                           trace=True)
    (artifact,) = result.artifacts
    assert result.exit_code == 0 and artifact.divergence["op"] is None, artifact.divergence
    assert artifact.divergence["compared"] >= 4
