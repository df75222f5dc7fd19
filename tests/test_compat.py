"""tfopt.compat, one test per difference between the TensorFlow releases tfopt supports; CI
runs this file on the oldest (2.15) and the newest."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from tfopt import compat
from tfopt.errors import UsageError


def test_the_installed_tensorflow_is_in_the_supported_range():
    assert compat.tf_version() >= compat.OLDEST
    compat.check_tensorflow()  # raises below the range


def test_an_older_tensorflow_is_refused_and_a_newer_one_named(monkeypatch):
    monkeypatch.setattr(compat, "tf_version", lambda: (2, 14))
    with pytest.raises(UsageError, match=r"older than tfopt supports; install "
                                         r"tensorflow>=2\.15") as raised:
        compat.check_tensorflow()
    assert raised.value.exit_code == 2
    monkeypatch.setattr(compat, "tf_version", lambda: (2, 99))
    with pytest.warns(UserWarning, match=r"newer than the releases tfopt was tested with"):
        compat.check_tensorflow()


def test_keras_2_comes_with_tensorflow_2_15_and_keras_3_after():
    import keras

    assert compat.keras_major() == int(keras.__version__.split(".")[0])
    assert compat.keras_major() == (2 if compat.tf_version() < (2, 16) else 3)


def test_nested_structures_pack_alike_under_either_keras():
    structure = {"b": (1, 2), "a": [3]}
    assert compat.nest().is_nested(structure) and not compat.nest().is_nested(np.zeros(3))
    packed = compat.nest().pack_sequence_as(structure, [10, 20, 30])
    assert packed == {"a": [10], "b": (20, 30)}  # sorted keys, as Keras and tf.nest flatten


def _save_twice(tmp_path):
    import tensorflow as tf

    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.call = tf.function(lambda x: x * module.scale,
                              input_signature=[tf.TensorSpec([None], tf.float32)])
    paths = [tmp_path / "a", tmp_path / "b"]
    for path in paths:
        tf.saved_model.save(module, str(path))
    return paths


def test_fingerprint_uuid_exists_where_tensorflow_writes_a_random_one(tmp_path):
    import hashlib

    from tensorflow.core.protobuf import fingerprint_pb2

    from tfopt.exporters.saved_model import _deterministic_fingerprint

    def read(path):
        return fingerprint_pb2.FingerprintDef.FromString((path / "fingerprint.pb").read_bytes())

    first, second = _save_twice(tmp_path)
    before = (first / "fingerprint.pb").read_bytes()
    _deterministic_fingerprint(first)
    if compat.fingerprint_has_uuid():  # random on every save, then derived from the graph
        assert read(first).uuid != read(second).uuid != ""
        digest = hashlib.sha256((first / "saved_model.pb").read_bytes()).hexdigest()
        assert read(first).uuid == str(int(digest[:30], 16))
    else:  # content hashes alone: nothing to make deterministic
        assert (first / "fingerprint.pb").read_bytes() == before
        assert read(first).saved_model_checksum != 0


def test_tflite_op_names_and_interpreter_on_every_release(tmp_path):
    import tensorflow as tf

    from tfopt.exporters.tflite import op_names

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def model(x):
        return {"y": tf.nn.relu(tf.matmul(x, tf.ones([4, 2])) - 1.0)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [model.get_concrete_function()], model)
    path = tmp_path / "m.tflite"
    path.write_bytes(converter.convert())
    interpreter = compat.tflite_interpreter_class()(model_path=str(path))
    interpreter.allocate_tensors()
    assert op_names(path) == [op["op_name"] for op in interpreter._get_ops_details()
                              if op["op_name"] != "DELEGATE"]  # XNNPACK, added at run time
    assert "FULLY_CONNECTED" in op_names(path) or "BATCH_MATMUL" in op_names(path)
    feed = np.array([[1.0, 2.0, 3.0, -9.0]], np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], feed)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, model(feed)["y"].numpy(), atol=1e-6)


def test_native_log_lines_are_dropped_and_everything_else_passes():
    from tfopt.logs import filter_native_log_lines

    lines = [
        b"I0000 00:00:1796485673.695663    6756 devices.cc:67] Number of eligible GPUs: 0\n",
        b"WARNING: All log messages before absl::InitializeLog() is called are written to "
        b"STDERR\n",
        b"2026-12-05 15:45:06.985880: I tensorflow/core/platform/cpu_feature_guard.cc:182] "
        b"This TensorFlow binary is optimized\n",
        b"W0000 00:00:1796485673.1 12 single_machine.cc:374] Starting new session\n",
        b"tfopt: error: something the user must see\n",
        b"F0000 00:00:1796485673.1 12 graph_view.cc:9] Check failed: a fatal error\n",
        b"Traceback (most recent call last):\n",
    ]
    raw, pipe = os.pipe()
    sink_read, sink = os.pipe()
    thread = threading.Thread(target=filter_native_log_lines, args=(raw, sink))
    thread.start()
    os.write(pipe, b"".join(lines))
    os.close(pipe)
    thread.join(timeout=10)
    os.close(sink)
    with os.fdopen(sink_read, "rb") as passed:
        assert passed.read() == b"".join(lines[4:])


def _private_internals():
    """The TF internals tfopt calls that no public API offers, as (where, check): the same on
    every supported release today, so each fails here, by name, on the first that drops it."""
    import inspect

    import tensorflow as tf
    from tensorflow.core.protobuf import rewriter_config_pb2
    from tensorflow.lite.python import schema_py_generated
    from tensorflow.python.client import pywrap_tf_session
    from tensorflow.python.framework import convert_to_constants as c2c
    from tensorflow.python.framework import op_def_registry
    from tensorflow.python.grappler import tf_optimizer

    return {
        "freeze core: converter data with a variable denylist": lambda: "variable_names_denylist"
        in inspect.signature(c2c._FunctionConverterDataInEager).parameters,
        "freeze core: _replace_variables_by_constants, _construct_concrete_function":
            lambda: callable(c2c._replace_variables_by_constants)
            and callable(c2c._construct_concrete_function),
        "TF1 freeze: convert_variables_to_constants_from_session_graph":
            lambda: callable(c2c.convert_variables_to_constants_from_session_graph),
        "loading without the checkpoint": lambda: "experimental_skip_checkpoint"
        in inspect.signature(tf.saved_model.LoadOptions).parameters,
        "Grappler: OptimizeGraph and disable_tfg_optimizer": lambda: callable(
            tf_optimizer.OptimizeGraph) and "disable_tfg_optimizer"
        in rewriter_config_pb2.RewriterConfig.DESCRIPTOR.fields_by_name,
        "the op registry": lambda: op_def_registry.get("Conv2D") is not None
        and callable(pywrap_tf_session.TF_GetAllOpList),
        "the TFLite flatbuffer schema": lambda: hasattr(schema_py_generated.Model,
                                                        "GetRootAsModel"),
    }


@pytest.mark.parametrize("internal", sorted(_private_internals()))
def test_the_private_tensorflow_internals_tfopt_calls_are_there(internal):
    assert _private_internals()[internal]()
