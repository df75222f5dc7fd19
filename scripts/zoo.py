"""The benchmark zoo: keras.applications architectures built with weights=None (nothing is
downloaded), given trained-looking weights so that folding bugs and dead outputs show."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# name -> (keras.applications constructor, input size): reduced sizes keep the bench short
ARCHITECTURES = {
    "MobileNetV2": ("MobileNetV2", 96),
    "MobileNetV3Small": ("MobileNetV3Small", 96),
    "EfficientNetB0": ("EfficientNetB0", 96),
    "ResNet50": ("ResNet50", 64),
    "DenseNet121": ("DenseNet121", 64),
    "InceptionV3": ("InceptionV3", 75),
    "NASNetMobile": ("NASNetMobile", 96),
    "ConvNeXtTiny": ("ConvNeXtTiny", 64),
}


def randomize(model, seed: int = 0) -> None:
    """Give a freshly built Keras model trained-looking weights: non-zero biases, random BN
    affine terms, and BN statistics taken from a real batch.

    With default initializers, BN is an identity and biases are zero, so folding bugs would
    hide; with made-up statistics, activations vanish and every input gives the same output.
    """
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for weight in layer.weights:
            name = weight.path if hasattr(weight, "path") else weight.name
            dtype = tf.as_dtype(weight.dtype).as_numpy_dtype  # Keras 2 gives a tf.DType
            if "beta" in name or "bias" in name:
                weight.assign(rng.normal(0, 0.1, weight.shape).astype(dtype))
            elif "gamma" in name:
                weight.assign(rng.uniform(0.8, 1.2, weight.shape).astype(dtype))
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0  # the next training-mode call sets the moving stats to batch stats
    shape = (8,) + tuple(model.inputs[0].shape[1:])
    model(rng.standard_normal(shape).astype(np.float32), training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum


def build(name: str, classes: int = 10):
    """A randomized keras.applications model of the zoo."""
    import keras

    constructor, size = ARCHITECTURES[name]
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, constructor)(weights=None, input_shape=(size, size, 3),
                                                     classes=classes)
    randomize(model)
    return model


def export(name: str, directory: Path) -> Path:
    """The zoo model as a TF2 SavedModel (what both tfopt and the peers read)."""
    path = directory / name
    save_serving(build(name), path)
    return path


def save_serving(model, path) -> None:
    """`model.export(path)`, quiet: Keras 3 prints its signature unless told not to; Keras 2
    (TF 2.15) prints nothing and has no such argument."""
    from tfopt import compat

    quiet = {"verbose": False} if compat.keras_major() >= 3 else {}
    model.export(str(path), **quiet)


def greedy_decoder(path: Path, steps: int = 10) -> Path:
    """A tf.while_loop greedy decoder whose body reads weights (an embedding gathered and
    matrices read inside the loop), as a tf.Module SavedModel; input `start` [None]."""
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

            tokens = tf.TensorArray(tf.int32, size=steps, element_shape=[None])
            state = tf.zeros([tf.shape(start)[0], 8])
            _, _, _, tokens = tf.while_loop(lambda i, *_: i < steps, body,
                                            [0, start, state, tokens])
            return {"tokens": tf.transpose(tokens.stack())}

    module = Decoder()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def padded_nms_head(path: Path, boxes: tuple[int, ...] = (64,), max_output: int = 8) -> Path:
    """tf.image.non_max_suppression_padded over boxes of shape boxes + (4,) (a leading batch
    dim makes it the batched form), as a tf.Module SavedModel."""
    import tensorflow as tf

    class Head(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([*boxes, 4], tf.float32, name="boxes"),
                                      tf.TensorSpec(list(boxes), tf.float32, name="scores")])
        def serve(self, boxes, scores):
            indices, count = tf.image.non_max_suppression_padded(
                boxes, scores, max_output_size=max_output, iou_threshold=0.5,
                score_threshold=0.1, pad_to_max_output_size=True)
            return {"indices": indices, "count": count}

    module = Head()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def combined_nms_head(path: Path, batch: int, count: int, boxes_per_class: int, classes: int,
                      per_class: int, total: int) -> Path:
    """tf.image.combined_non_max_suppression, its outputs named like its inputs (`boxes`,
    `scores`), as detection heads do; boxes [batch, count, boxes_per_class, 4]."""
    import tensorflow as tf

    class Head(tf.Module):
        @tf.function(input_signature=[
            tf.TensorSpec([batch, count, boxes_per_class, 4], tf.float32, name="boxes"),
            tf.TensorSpec([batch, count, classes], tf.float32, name="scores")])
        def serve(self, boxes, scores):
            b, s, c, v = tf.image.combined_non_max_suppression(
                boxes, scores, max_output_size_per_class=per_class, max_total_size=total,
                iou_threshold=0.5, score_threshold=0.2, clip_boxes=True)
            return {"boxes": b, "scores": s, "classes": c, "valid": v}

    module = Head()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def fake_quant_cnn(path, left_float: bool = False):
    """A CNN as tfmot lays it out: per-channel narrow-range weights, per-tensor activations;
    symmetric ranges whose zero point falls on a half (TF nudges them), an Args fake quant,
    a narrow-range activation; with left_float, a dense head no fake quant covers."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    k1 = rng.normal(0, .3, (3, 3, 1, 8)).astype("float32")
    k2 = rng.normal(0, .05, (8 * 14 * 14, 16)).astype("float32")
    k3 = rng.normal(0, .3, (16, 10)).astype("float32")
    reach1 = np.abs(k1).max((0, 1, 2))
    module = tf.Module()
    module.k1, module.k2, module.k3 = (tf.Variable(k) for k in (k1, k2, k3))
    module.ranges = tf.Variable([-3.0, 3.0, 4.0, -8.0, 8.0])

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="image")])
    def serve(x):
        quant = tf.quantization
        r = module.ranges
        x = quant.fake_quant_with_min_max_vars(x, r[0], r[1])
        kernel = quant.fake_quant_with_min_max_vars_per_channel(module.k1, -reach1, reach1,
                                                                narrow_range=True)
        y = quant.fake_quant_with_min_max_args(tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME")),
                                               0.0, 4.0)
        y = tf.reshape(tf.nn.max_pool2d(y, 2, 2, "VALID"), [-1, 8 * 14 * 14])
        reach2 = float(np.abs(k2).max())
        dense = tf.matmul(y, quant.fake_quant_with_min_max_vars(module.k2, -reach2, reach2,
                                                                narrow_range=True))
        y = quant.fake_quant_with_min_max_vars(dense, r[3], r[4], narrow_range=True)
        if left_float:
            y = tf.matmul(tf.nn.relu(y), module.k3)
        return {"logits": y}

    tf.saved_model.save(module, str(path), signatures=serve.get_concrete_function())
    return path


def outlier_model(path: Path):
    """A trained classifier whose 'bad' layer has one huge-magnitude unit that the head
    ignores: per-tensor int8 ranges then wipe out the layer's other units."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((20, 64)).astype(np.float32) * 2
    labels = rng.integers(0, 20, 4000)
    x = centers[labels] + rng.standard_normal((4000, 64)).astype(np.float32)
    inputs = keras.Input((64,), name="x")
    h = keras.layers.Dense(512, activation="relu")(inputs)
    h = keras.layers.Dense(512, activation="relu")(h)
    bad = keras.layers.Dense(64, name="bad")(h)
    outputs = keras.layers.Softmax()(keras.layers.Dense(20, name="head")(bad))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, labels, epochs=3, batch_size=64, verbose=0)
    weights, bias = model.get_layer("bad").get_weights()
    weights[:, 0] *= 10000
    model.get_layer("bad").set_weights([weights, bias])
    weights, bias = model.get_layer("head").get_weights()
    weights[0, :] = 0
    model.get_layer("head").set_weights([weights, bias])
    save_serving(model, str(path / "model"))
    np.savez(path / "calibration.npz", x=x[:200])
    return path / "model", path / "calibration.npz"


def bert(vocabulary: int = 30522, layers: int = 12, hidden: int = 768, heads: int = 12,
         intermediate: int = 3072, sequence: int = 128, seed: int = 0):
    """A BERT encoder as keras_hub's BertBackbone builds it, in plain Keras (nothing to
    install or download): token, position and segment embeddings, then post-norm blocks of
    MultiHeadAttention (EinsumDense projections) and a GELU feed-forward, and the pooled
    first token. Defaults are BERT-base (110 M parameters, 436 MB); random weights."""
    import keras

    keras.utils.set_random_seed(seed)
    ids = keras.Input((sequence,), dtype="int32", name="token_ids")
    segments = keras.Input((sequence,), dtype="int32", name="segment_ids")
    mask = keras.Input((sequence,), dtype="int32", name="padding_mask")
    tokens = keras.layers.Embedding(vocabulary, hidden, name="token_embedding")(ids)
    positions = keras.layers.Embedding(sequence, hidden, name="position_embedding")(
        keras.ops.arange(sequence)[None, :])
    x = tokens + positions + keras.layers.Embedding(2, hidden, name="segment_embedding")(
        segments)
    x = keras.layers.LayerNormalization(epsilon=1e-12, name="embeddings_layer_norm")(x)
    attention_mask = keras.ops.cast(mask[:, None, :], "bool")
    for i in range(layers):
        attended = keras.layers.MultiHeadAttention(
            heads, hidden // heads, name=f"transformer_layer_{i}_attention")(
            x, x, attention_mask=attention_mask)
        x = keras.layers.LayerNormalization(epsilon=1e-12, name=f"transformer_layer_{i}_norm1")(
            x + attended)
        ff = keras.layers.Dense(intermediate, activation="gelu",
                                name=f"transformer_layer_{i}_intermediate")(x)
        ff = keras.layers.Dense(hidden, name=f"transformer_layer_{i}_output")(ff)
        x = keras.layers.LayerNormalization(epsilon=1e-12, name=f"transformer_layer_{i}_norm2")(
            x + ff)
    pooled = keras.layers.Dense(hidden, activation="tanh", name="pooled_dense")(x[:, 0, :])
    return keras.Model([ids, segments, mask], {"sequence_output": x, "pooled_output": pooled})
