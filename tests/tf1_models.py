"""TF1 training graphs built from raw ops, as old production models carry them.

Keras 3 has no tf.compat.v1.layers, so the layers are written with get_variable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPE = (8, 8, 1)
CLASSES = 4


def _fused_bn(tf, x, name: str, training, decay: float = 0.9):
    """FusedBatchNorm with moving averages updated (through UPDATE_OPS) in training mode."""
    channels = x.shape[-1]
    with tf.compat.v1.variable_scope(name):
        gamma = tf.compat.v1.get_variable("gamma", [channels],
                                          initializer=tf.compat.v1.ones_initializer())
        beta = tf.compat.v1.get_variable("beta", [channels],
                                         initializer=tf.compat.v1.zeros_initializer())
        mean = tf.compat.v1.get_variable("moving_mean", [channels], trainable=False,
                                         initializer=tf.compat.v1.zeros_initializer())
        var = tf.compat.v1.get_variable("moving_variance", [channels], trainable=False,
                                        initializer=tf.compat.v1.ones_initializer())

        def train_stats():
            return tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=1e-3,
                                                    is_training=True)

        def infer_stats():
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, mean=mean, variance=var,
                                                        epsilon=1e-3, is_training=False)
            return y, tf.identity(mean), tf.identity(var)

        def update(variable, value, name):
            return tf.compat.v1.assign_sub(variable, (variable - value) * (1 - decay), name=name)

        if training is True:  # hard-wired training mode, as in graphs built for training only
            y, batch_mean, batch_var = train_stats()
            updates = [update(mean, batch_mean, "AssignMovingAvg"),
                       update(var, batch_var, "AssignMovingAvg_1")]
        else:  # as tf.layers.batch_normalization(training=tensor) builds it
            y, batch_mean, batch_var = tf.cond(training, train_stats, infer_stats)
            updates = [tf.cond(training, lambda: update(mean, batch_mean, "AssignMovingAvg"),
                               lambda: tf.identity(mean)),
                       tf.cond(training, lambda: update(var, batch_var, "AssignMovingAvg_1"),
                               lambda: tf.identity(var))]
        for op in updates:
            tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS, op)
        return y


def build_training_graph(control_flow: str = "v2", switch: str = "default",
                         resource: bool = True, seed: int = 0):
    """A conv + BN + ReLU + dropout + dense + softmax classifier with its whole training
    machinery (Adam, global step, summaries, saver), trained a few steps.

    switch: "default" (is_training is a PlaceholderWithDefault False), "placeholder" (a plain
    bool Placeholder) or "hardwired" (batch norm and dropout always in training mode).
    Returns (graph, session, handles); the caller closes the session.
    """
    import tensorflow as tf

    if control_flow == "v1":
        tf.compat.v1.disable_control_flow_v2()
    try:
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.set_random_seed(seed)
            rng = np.random.default_rng(seed)
            x = tf.compat.v1.placeholder(tf.float32, (None,) + SHAPE, name="x")
            labels = tf.compat.v1.placeholder(tf.int64, [None], name="labels")
            if switch == "default":
                training = tf.compat.v1.placeholder_with_default(False, [], name="is_training")
            elif switch == "placeholder":
                training = tf.compat.v1.placeholder(tf.bool, [], name="is_training")
            else:
                training = True
            with tf.compat.v1.variable_scope("model",
                                             use_resource=resource):
                kernel = tf.compat.v1.get_variable("conv/kernel", [3, 3, 1, 6])
                h = tf.nn.conv2d(x, kernel, 1, "SAME")
                h = _fused_bn(tf, h, "bn", training)
                h = tf.nn.relu(h)
                if switch == "hardwired":
                    h = tf.nn.dropout(h, rate=0.3)
                else:
                    h = tf.cond(training, lambda: tf.nn.dropout(h, rate=0.3), lambda: h)
                h = tf.reshape(h, [-1, 8 * 8 * 6])
                w = tf.compat.v1.get_variable("dense/kernel", [8 * 8 * 6, CLASSES])
                b = tf.compat.v1.get_variable("dense/bias", [CLASSES],
                                              initializer=tf.compat.v1.zeros_initializer())
                logits = tf.nn.bias_add(tf.matmul(h, w), b, name="logits")
            probs = tf.nn.softmax(logits, name="probs")
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=logits), name="loss")
            global_step = tf.compat.v1.train.get_or_create_global_step()
            with tf.control_dependencies(tf.compat.v1.get_collection(
                    tf.compat.v1.GraphKeys.UPDATE_OPS)):
                train_op = tf.compat.v1.train.AdamOptimizer(0.01).minimize(
                    loss, global_step=global_step)
            tf.compat.v1.summary.scalar("loss", loss)
            tf.compat.v1.summary.histogram("logits", logits)
            summaries = tf.compat.v1.summary.merge_all()
            saver = tf.compat.v1.train.Saver()
            session = tf.compat.v1.Session(graph=graph)
            session.run(tf.compat.v1.global_variables_initializer())
            for _ in range(5):
                feed = {x: rng.standard_normal((16,) + SHAPE).astype(np.float32),
                        labels: rng.integers(0, CLASSES, 16)}
                if switch == "placeholder" or switch == "default":
                    feed[training] = True
                session.run([train_op, summaries], feed)
    finally:
        if control_flow == "v1":
            tf.compat.v1.enable_control_flow_v2()
    handles = dict(x=x, probs=probs, training=training, saver=saver, train_op=train_op)
    return graph, session, handles


def save_saved_model(graph, session, handles, path: Path) -> Path:
    import tensorflow as tf

    with graph.as_default():
        builder = tf.compat.v1.saved_model.Builder(str(path))
        signature = tf.compat.v1.saved_model.predict_signature_def(
            inputs={"x": handles["x"]}, outputs={"probs": handles["probs"]})
        builder.add_meta_graph_and_variables(
            session, [tf.compat.v1.saved_model.tag_constants.SERVING],
            signature_def_map={"serving_default": signature}, saver=handles["saver"],
            strip_default_attrs=True)
        builder.save()
    return path


def save_checkpoint(graph, session, handles, prefix: Path) -> Path:
    with graph.as_default():
        handles["saver"].save(session, str(prefix))
    return Path(f"{prefix}.meta")


def run_inference(session, handles, x: np.ndarray) -> np.ndarray:
    """The original graph's probabilities in inference mode."""
    feed = {handles["x"]: x}
    if handles["training"] is not True:
        feed[handles["training"]] = False
    return session.run(handles["probs"], feed)


def write_iterator_graph(path: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    """A frozen .pb whose input comes from a dataset iterator (IteratorGetNext), as graphs
    frozen straight out of a training script are. Returns (path, the weights' reference
    function input) -- the dense weights, to rebuild the expected output in numpy."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        images = rng.standard_normal((6,) + SHAPE).astype(np.float32)
        dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(6))).batch(2)
        features, _ = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        kernel = tf.compat.v1.get_variable("conv/kernel", [3, 3, 1, 2])
        h = tf.nn.relu(tf.nn.conv2d(features, kernel, 1, "SAME"))
        w = tf.compat.v1.get_variable("dense/kernel", [8 * 8 * 2, CLASSES])
        tf.nn.softmax(tf.matmul(tf.reshape(h, [-1, 8 * 8 * 2]), w), name="probs")
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), ["probs"])
            weights = session.run([kernel, w])
    path.write_bytes(frozen.SerializeToString())
    return path, weights
