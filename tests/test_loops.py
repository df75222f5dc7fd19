"""Loops whose body reads weights: a greedy decoder (embedding gathered and matrices read
inside a tf.while_loop) freezes with its weights as constants inside the body."""
from __future__ import annotations

import numpy as np
import pytest
import zoo


@pytest.fixture(scope="module")
def greedy_decoder(tmp_path_factory):
    return zoo.greedy_decoder(tmp_path_factory.mktemp("loops") / "decoder")


def test_a_decoder_reading_weights_in_its_loop_converts_exactly(greedy_decoder, tmp_path):
    import tensorflow as tf

    import tfopt

    result = tfopt.freeze(greedy_decoder, tmp_path / "out")
    assert result.exit_code == 0, [(a.format, a.error) for a in result.artifacts]
    for artifact in result.artifacts:
        assert artifact.parity.max_abs_err == 0.0 and artifact.batch == {"verified": [1, 3]}
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((tmp_path / "out" / "model.pb").read_bytes())
    body_ops = {n.op for f in graph_def.library.function for n in f.node_def}
    assert "GatherV2" in body_ops and not body_ops & {"ResourceGather", "ReadVariableOp"}
    # the tokens depend on the start token, so exact parity means something
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    start = np.array([1, 2, 3], np.int32)
    (tokens,) = session.run(None, {session.get_inputs()[0].name: start})
    original = tf.saved_model.load(str(greedy_decoder)).signatures["serving_default"]
    np.testing.assert_array_equal(tokens, original(start=tf.constant(start))["tokens"])
    assert len({tuple(row) for row in tokens}) > 1
