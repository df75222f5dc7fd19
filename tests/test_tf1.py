"""TF1 training graphs: SavedModels (control flow v1 and v2), checkpoints and frozen .pb files,
frozen for inference, checked against the original run with is_training=False."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tf1_models
from conftest import tree_digest

from tfopt.categories import classify
from tfopt.commands import main
from tfopt.errors import InputError, UsageError

REMOVED_OPS = {"Switch", "RefSwitch", "Merge", "RefMerge", "If", "StatelessIf", "RandomUniform",
               "VariableV2", "VarHandleOp", "ReadVariableOp", "FusedBatchNormGradV3"}
TRAINING = ("gradients", "optimizer", "summaries", "save_restore", "initializers")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each variant once: (graph, session, handles, SavedModel dir, checkpoint .meta)."""
    models = {}
    root = tmp_path_factory.mktemp("tf1")
    for key, control_flow, switch, resource in (("v1", "v1", "default", False),
                                                ("v2", "v2", "default", True),
                                                ("placeholder", "v1", "placeholder", False),
                                                ("hardwired", "v1", "hardwired", True)):
        graph, session, handles = tf1_models.build_training_graph(control_flow, switch, resource)
        saved = tf1_models.save_saved_model(graph, session, handles, root / f"{key}_sm")
        meta = tf1_models.save_checkpoint(graph, session, handles, root / f"{key}_ckpt" / "model")
        models[key] = (graph, session, handles, saved, meta)
    yield models
    for _, session, *_ in models.values():
        session.close()


def images(n: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n,) + tf1_models.SHAPE).astype(np.float32)


def run_onnx(path: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["probs"], {"x": x})[0]


def pb_ops(path: str) -> set[str]:
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(path).read_bytes())
    return {n.op for n in graph_def.node} | {n.op for f in graph_def.library.function
                                             for n in f.node_def}


@pytest.mark.parametrize("key", ["v1", "v2"])
def test_training_saved_model_converts_to_every_target(built, freeze_once, key):
    _graph, session, handles, saved, _ = built[key]
    digest = tree_digest(saved)
    result = freeze_once(f"tf1_{key}", saved)
    assert result.exit_code == 0, result.summary()
    assert result.source.format == "saved_model_v1"
    assert result.source.optimizer_variables > 0
    for category in TRAINING:
        assert result.removed[category] > 0, (category, result.removed)
    assert result.removed["control_flow"] > 0
    # the frozen graph: no training op, no control flow, no random op, no variable
    pb = pb_ops(result.artifact("pb").path)
    assert not pb & REMOVED_OPS, pb & REMOVED_OPS
    import onnx

    onnx_ops = {n.op_type for n in onnx.load(result.artifact("onnx").path).graph.node}
    assert not onnx_ops & {"If", "Loop"}
    # against the original graph run with is_training=False, not against ourselves
    x = images()
    expected = tf1_models.run_inference(session, handles, x)
    np.testing.assert_allclose(run_onnx(result.artifact("onnx").path, x), expected, atol=1e-5)
    assert result.source.reference == "the original graph"
    assert all(a.parity.max_abs_err <= 1e-5 for a in result.artifacts)
    assert np.ptp(expected, axis=0).max() > 1e-3  # the outputs depend on the input
    assert tree_digest(saved) == digest


def test_bool_placeholder_needs_freeze_placeholder(built, tmp_path, capsys):
    saved = built["placeholder"][3]
    code = main([str(saved), "-o", str(tmp_path / "out"), "--to", "pb"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--freeze-placeholder is_training=false" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_freeze_placeholder_sets_the_training_flag(built, tmp_path):
    import tfopt

    _graph, session, handles, saved, _ = built["placeholder"]
    result = tfopt.freeze(saved, tmp_path / "out", targets=["pb"],
                          freeze_placeholders={"is_training": "false"})
    assert result.exit_code == 0
    assert not pb_ops(result.artifact("pb").path) & REMOVED_OPS
    from tfopt.exporters import EXPORTERS

    x = images()
    run = EXPORTERS["pb"].runner(Path(result.artifact("pb").path), _model(result))
    np.testing.assert_allclose(run({"x": x})["probs"],
                               tf1_models.run_inference(session, handles, x), atol=1e-5)


def _model(result):
    from tfopt.model import Model

    return Model(None, result.inputs, result.outputs, "serving_default")


def test_training_mode_batch_norm_and_dropout_become_inference_ops(built, freeze_once):
    import tensorflow as tf

    graph, session, _handles, saved, _ = built["hardwired"]
    result = freeze_once("tf1_hardwired", saved, targets=["pb", "onnx"])
    assert result.exit_code == 0
    rewrite = next(p for p in result.passes if p.name == "training_batch_norm")
    assert [c["mean"] for c in rewrite.changes] == ["model/bn/moving_mean"]
    assert "training_batch_norm" in result.source.reference
    assert result.removed["dropout"] == 1
    # a hand-built inference graph from the trained values
    names = ["conv/kernel", "bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance",
             "dense/kernel", "dense/bias"]
    with graph.as_default():
        found = {v.op.name: v for v in tf.compat.v1.global_variables()}
        values = session.run([found[f"model/{n}"] for n in names])
    kernel, gamma, beta, mean, var, dense, bias = values
    assert np.abs(mean).max() > 0  # training moved the statistics
    x = images()
    h = tf.nn.conv2d(x, kernel, 1, "SAME")
    h, _, _ = tf.compat.v1.nn.fused_batch_norm(h, gamma, beta, mean=mean, variance=var,
                                               epsilon=1e-3, is_training=False)
    h = tf.reshape(tf.nn.relu(h), [-1, 8 * 8 * 6])
    expected = tf.nn.softmax(tf.matmul(h, dense) + bias).numpy()
    np.testing.assert_allclose(run_onnx(result.artifact("onnx").path, x), expected, atol=1e-5)


def test_training_batch_norm_without_moving_statistics_is_refused(tmp_path):
    import tensorflow as tf

    import tfopt

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 2], name="x")
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, tf.ones([2]), tf.zeros([2]),
                                                   is_training=True, name="norm")
        tf.identity(y, name="y")
    path = tmp_path / "train_bn.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(InputError, match="batch norm norm runs in training mode"):
        tfopt.freeze(path, tmp_path / "out", targets=["pb"])


def test_checkpoint_converts_with_outputs(built, freeze_once, tmp_path, capsys):
    _graph, session, handles, _, meta = built["v1"]
    code = main([str(meta), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "--outputs" in err and "probs, loss" in err
    result = freeze_once("tf1_checkpoint", meta, targets=["pb", "onnx"], outputs=["probs"])
    assert result.exit_code == 0 and result.source.format == "checkpoint"
    assert [t.name for t in result.inputs] == ["x"] and [t.name for t in result.outputs] == \
        ["probs"]
    x = images()
    np.testing.assert_allclose(run_onnx(result.artifact("onnx").path, x),
                               tf1_models.run_inference(session, handles, x), atol=1e-5)


@pytest.fixture(scope="module")
def iterator_pb(tmp_path_factory):
    return tf1_models.write_iterator_graph(tmp_path_factory.mktemp("pb") / "frozen.pb")


def test_iterator_input_is_cut_with_inputs(iterator_pb, tmp_path, capsys):
    path, (kernel, dense) = iterator_pb
    code = main([str(path), "-o", str(tmp_path / "refused")])
    err = capsys.readouterr().err
    assert code == 2 and "IteratorGetNext" in err
    assert "--inputs IteratorGetNext:0:float32:-1,8,8,1" in err
    assert main([str(path), "-o", str(tmp_path / "out"), "--to", "onnx,pb", "-q",
                 "--inputs", "IteratorGetNext:0:float32:1,8,8,1"]) == 0
    result = json.loads((tmp_path / "out" / "report.json").read_text())
    assert result["inputs"] == [{"name": "IteratorGetNext", "dtype": "float32",
                                 "shape": [1, 8, 8, 1]}]
    assert result["removed"]["input_queues"] > 0
    x = images(1)
    hidden = np.maximum(_conv_same(x, kernel), 0).reshape(1, -1) @ dense
    expected = np.exp(hidden) / np.exp(hidden).sum(axis=1, keepdims=True)
    import onnxruntime

    onnx_session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"),
                                                providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(onnx_session.run(None, {"IteratorGetNext": x})[0], expected,
                               atol=1e-5)


def _conv_same(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """3x3 SAME convolution, stride 1, NHWC, in numpy."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros(x.shape[:3] + (kernel.shape[3],), np.float64)
    for i in range(3):
        for j in range(3):
            out += np.einsum("nhwc,co->nhwo", padded[:, i:i + x.shape[1], j:j + x.shape[2]],
                             kernel[i, j])
    return out


def test_inspect_lists_io_and_training_ops(built, iterator_pb):
    from tfopt.inspection import inspect

    saved, meta = built["v1"][3], built["v1"][4]
    report = inspect(saved)
    assert report["format"] == "saved_model_v1"
    sig = report["signatures"]["serving_default"]
    assert sig["inputs"] == [{"name": "x", "dtype": "float32", "shape": [None, 8, 8, 1]}]
    assert [t["name"] for t in sig["outputs"]] == ["probs"]
    for category in TRAINING:
        assert report["training_ops"][category] > 0
    assert report["variables"]["optimizer_variables"] > 0
    assert report["unsupported_ops"] == {"onnx": [], "tflite": [], "pb": [], "saved_model": [],
                                         "openvino": []}

    report = inspect(meta)
    assert report["signatures"] == {}
    assert report["candidates"]["outputs"] == ["probs", "loss"]
    assert "x" in [t["name"] for t in report["candidates"]["inputs"]]
    assert report["unsupported_ops"] is None and "--outputs" in report["note"]

    report = inspect(iterator_pb[0])
    assert report["candidates"]["iterators"][0]["use"] == \
        "--inputs IteratorGetNext:0:float32:-1,8,8,1"
    assert report["training_ops"] == {"input_queues": 6}


def test_inspect_cli_json(built):
    meta = built["v2"][4]
    done = subprocess.run([sys.executable, "-m", "tfopt", "inspect", str(meta), "--json",
                           "--outputs", "probs"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["format"] == "checkpoint"
    assert report["training_ops"]["gradients"] > 0
    assert report["unsupported_ops"]["onnx"] == []


def test_inspect_names_ops_a_target_cannot_express(tmp_path):
    import tensorflow as tf

    from tfopt.inspection import inspect

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2], name="x")
        tf.identity(tf.math.betainc(x, x, x), name="y")
    path = tmp_path / "betainc.pbtxt"
    tf.io.write_graph(graph.as_graph_def(), str(tmp_path), path.name, as_text=True)
    report = inspect(path)
    assert report["unsupported_ops"]["onnx"] == ["Betainc"]
    assert report["unsupported_ops"]["tflite"] == ["Betainc"]


@pytest.mark.parametrize("args, message", [
    (["--inputs", "nope:0"], "not a tensor of the graph"),
    (["--inputs", "x:0:notadtype"], "numpy dtype"),
    (["--freeze-placeholder", "nope=1"], "not a placeholder"),
    (["--freeze-placeholder", "is_training=maybe"], "not a bool value"),
    (["--outputs", "nope"], "not in the graph"),
])
def test_bad_graph_options(built, tmp_path, capsys, args, message):
    meta = built["v1"][4]
    code = main([str(meta), "-o", str(tmp_path / "out"), "--to", "pb"]
                + (args if "--outputs" in args else args + ["--outputs", "probs"]))
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_graph_options_are_refused_for_tf2_models(tmp_path):
    from conftest import SAMPLES

    import tfopt

    with pytest.raises(UsageError, match="--outputs apply to TF1 graphs"):
        tfopt.freeze(SAMPLES / "keras_cnn", tmp_path / "out", outputs=["y"])


def test_candidates_skip_training_only_nodes(built):
    from tfopt.loaders.tf1 import candidate_outputs

    graph_def = built["v2"][0].as_graph_def()
    assert candidate_outputs(graph_def) == ["probs", "loss"]
    assert classify(next(n for n in graph_def.node if n.name == "loss")) is None


def test_large_weight_bytes_says_it_does_not_apply_to_a_tf1_graph(iterator_pb, tmp_path):
    import tfopt

    path, _ = iterator_pb
    cut = ["IteratorGetNext:0:float32:1,8,8,1"]
    with pytest.warns(UserWarning, match="--large-weight-bytes applies to TF2"):
        result = tfopt.freeze(path, tmp_path / "out", targets=["pb"], inputs=cut,
                              large_weight_bytes=1024)
    assert result.exit_code == 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="--large-weight-bytes")
        assert tfopt.freeze(path, tmp_path / "default", targets=["pb"],
                            inputs=cut).exit_code == 0


def test_inspect_validates_its_options(built):
    from tfopt.inspection import inspect

    with pytest.raises(UsageError, match="--opset 3"):
        inspect(built["v1"][4], opset=3)
