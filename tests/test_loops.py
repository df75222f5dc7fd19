"""Loops whose body reads weights: a greedy decoder (embedding gathered and matrices read
inside a tf.while_loop) freezes with its weights as constants inside the body."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def greedy_decoder(tmp_path_factory):
    import tensorflow as tf

    class Decoder(tf.Module):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.embedding = tf.Variable(rng.standard_normal((20, 8)).astype(np.float32))
            self.step = tf.Variable(rng.standard_normal((8, 8)).astype(np.float32) * 0.3)
            self.vocab = tf.Variable(rng.standard_normal((8, 20)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="start")])
        def serve(self, start):
            def body(i, token, state, tokens):
                state = tf.tanh(tf.matmul(tf.gather(self.embedding, token) + state, self.step))
                token = tf.argmax(tf.matmul(state, self.vocab), -1, output_type=tf.int32)
                return i + 1, token, state, tokens.write(i, token)

            tokens = tf.TensorArray(tf.int32, size=10, element_shape=[None])
            state = tf.zeros([tf.shape(start)[0], 8])
            _, _, _, tokens = tf.while_loop(lambda i, *_: i < 10, body,
                                            [0, start, state, tokens])
            return {"tokens": tf.transpose(tokens.stack())}

    module = Decoder()
    path = tmp_path_factory.mktemp("loops") / "decoder"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


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
