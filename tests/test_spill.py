"""What keeps a conversion's time and memory near the weights: a graph set aside in a file is
read back byte for byte, a graph read back unchanged pages out without being written again,
renames walk the graph once, read-only constants are views, and tf2onnx's optimizers run
without a copy of the graph each (one that raises is still skipped)."""
from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import tensorflow as tf
from conftest import save_serving
from test_passes import build

import tfopt
import tfopt.graph
import tfopt.model
from tfopt.graph import const_value, const_view, rename_nodes
from tfopt.model import Model, Spilled, graphs_paged_out


def _graph():
    rng = np.random.default_rng(0)

    def graph():
        x = tf.compat.v1.placeholder(tf.float32, [None, 64], name="x")
        kernel = tf.constant(rng.standard_normal((64, 64)).astype(np.float32), name="kernel")
        tf.identity(tf.linalg.matmul(x, kernel) + 1.0, name="y")

    graph_def = build(graph)
    graph_def.library.function.add().signature.name = "kept_function"
    return graph_def


def test_a_spilled_graph_reads_back_as_written_and_pages_out_from_its_file(monkeypatch):
    graph_def = _graph()
    serialized = graph_def.SerializeToString(deterministic=True)  # map entries in one order
    spilled = Spilled.of(Model(graph_def, [], []))
    assert spilled.file is not None and not spilled.model.graph_def.node
    model = spilled.load()
    assert model.graph_def.SerializeToString(deterministic=True) == serialized  # all fields
    assert model.written is spilled

    def no_write(*args):
        raise AssertionError("a graph read back unchanged was written again")

    monkeypatch.setattr(tfopt.model, "_write_graph", no_write)
    with graphs_paged_out(model, model):
        assert not model.graph_def.node
    assert model.graph_def.SerializeToString(deterministic=True) == serialized
    assert model.written is spilled
    changed = model.with_graph(_graph())
    assert changed.written is None and model.with_graph(model.graph_def).written is spilled


def test_a_graph_past_protobufs_limit_stays_in_memory(monkeypatch):
    graph_def = _graph()
    monkeypatch.setattr(tfopt.graph, "PROTOBUF_LIMIT", 1000)  # the kernel alone is 16 KB
    model = Model(graph_def, [], [])
    spilled = Spilled.of(model)
    assert spilled.file is None and spilled.load() is model
    with graphs_paged_out(model):
        assert model.graph_def is graph_def


def test_renames_apply_at_once_to_nodes_ports_and_control_inputs():
    graph_def = tf.compat.v1.GraphDef()
    for name, inputs in (("a", []), ("b", ["a"]), ("c", ["a:1", "^b"]), ("d", ["c", "b:2"])):
        node = graph_def.node.add(name=name, op="NoOp")
        node.input.extend(inputs)
    rename_nodes(graph_def, {"a": "b", "b": "e"})  # a new name may be another's old one
    assert [(n.name, list(n.input)) for n in graph_def.node] == [
        ("b", []), ("e", ["b"]), ("c", ["b:1", "^e"]), ("d", ["c", "e:2"])]


def test_read_only_constant_views_equal_their_values():
    for value in (np.arange(12, dtype=np.float32).reshape(3, 4),
                  np.arange(6, dtype=np.int64).reshape(2, 3, 1),
                  np.linspace(0, 1, 8).astype(np.float16),
                  np.linspace(0, 1, 8).astype(ml_dtypes.bfloat16),
                  np.array(3.5, np.float32), np.array([b"a", b"bc"], dtype=object)):
        node = tfopt.graph.const_node("c", value)
        view = const_view(node)
        assert view.dtype == value.dtype and view.shape == value.shape
        np.testing.assert_array_equal(view, const_value(node))


def test_a_tf2onnx_optimizer_that_raises_is_skipped(tmp_path, monkeypatch):
    import keras
    from tf2onnx import optimizer

    class Raising:
        def optimize(self, graph, iteration):
            raise RuntimeError("an optimizer's bug")

    monkeypatch.setitem(optimizer._optimizers, "raising", Raising)
    keras.utils.set_random_seed(0)
    x = keras.Input((8,), name="x")
    save_serving(keras.Model(x, keras.layers.Dense(4)(x)), str(tmp_path / "m"))
    result = tfopt.freeze(tmp_path / "m", tmp_path / "out", targets=["onnx"])
    assert result.exit_code == 0, result.artifact("onnx").error
    assert "TF2ONNX_CATCH_ERRORS" not in os.environ
