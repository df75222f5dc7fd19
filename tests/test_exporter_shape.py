"""The shape of the back half: a target is one exporter module. A toy one
(tests/toy_exporter.py), installed as another package would install it (an entry point in
the "tfopt.exporters" group), converts, verifies and reports through `tfopt SRC --to toy`
with no change to tfopt."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import toy_exporter

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    module = tf.Module()
    module.w1 = tf.Variable(rng.normal(0, 0.5, (6, 8)).astype(np.float32))
    module.b1 = tf.Variable(rng.normal(0, 0.1, (8,)).astype(np.float32))
    module.w2 = tf.Variable(rng.normal(0, 0.5, (8, 3)).astype(np.float32))
    serve = tf.function(
        lambda x: {"y": tf.matmul(tf.nn.relu(tf.nn.bias_add(tf.matmul(x, module.w1), module.b1)),
                                  module.w2)},
        input_signature=[tf.TensorSpec([None, 6], tf.float32, name="x")])
    path = tmp_path_factory.mktemp("dense") / "dense"
    tf.saved_model.save(module, str(path), signatures=serve.get_concrete_function())
    return path


def test_an_installed_toy_target_converts_and_verifies_from_the_command_line(dense, tmp_path):
    site = tmp_path / "site"  # the toy "installed": its module and its entry point
    info = site / "toy_exporter-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-exporter\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tfopt.exporters]\ntoy = toy_exporter\n")
    (site / "toy_exporter.py").write_text((HERE / "toy_exporter.py").read_text())
    path = os.pathsep.join([str(site), str(HERE.parent)])
    done = subprocess.run([sys.executable, "-m", "tfopt", str(dense), "-o", str(tmp_path / "out"),
                           "--to", "toy,onnx", "-q"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=path), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    toy = report["artifacts"][0]
    assert toy["format"] == "toy" and toy["status"] == "ok" and toy["parity"]["passed"]
    assert toy["ops"] == {"MatMul": 2, "BiasAdd": 1, "Relu": 1, "Identity": 1}, toy["ops"]
    assert toy["bytes"] == (tmp_path / "out" / "model.npz").stat().st_size
    assert report["artifacts"][1]["format"] == "onnx"


def test_a_toy_that_computes_wrong_is_caught(dense, tmp_path, monkeypatch):
    import tfopt
    from tfopt.exporters import EXPORTERS

    monkeypatch.setitem(EXPORTERS, "toy", toy_exporter)
    monkeypatch.setitem(toy_exporter.KERNELS, "Relu", np.abs)
    result = tfopt.freeze(dense, tmp_path / "out", targets=["toy"])
    assert result.exit_code == 4 and not result.artifact("toy").parity.passed
