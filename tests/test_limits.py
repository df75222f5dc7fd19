"""Bounded runs: a model that never ends or fills memory is stopped at --timeout /
--max-memory with exit 7, names the stage, and publishes nothing (an old OUT stays)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import tfopt
from tfopt.errors import EXIT_LIMIT, UsageError
from tfopt.limits import LimitReached, available_memory, default_max_memory, parse_size
from tfopt.options import FreezeOptions

SAMPLES = Path(__file__).resolve().parent.parent / "saved_models"


@pytest.fixture(scope="module")
def endless(tmp_path_factory) -> Path:
    """A decoder that never emits its end token: the loop's condition stays true."""
    import tensorflow as tf

    class Endless(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
        def serve(self, x):
            def cond(i, y):
                return tf.reduce_max(tf.abs(y)) < 1e30

            _, y = tf.while_loop(cond, lambda i, y: (i + 1, y * 1.0000001 + 1e-9),
                                 [tf.constant(0), x])
            return {"y": y}

    path = tmp_path_factory.mktemp("endless") / "model"
    module = Endless()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="module")
def memory_bomb(tmp_path_factory) -> Path:
    """Fills a 40000 x 40000 float tensor (6 GB) whose shape is computed from the input."""
    import tensorflow as tf

    class Bomb(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
        def serve(self, x):
            side = tf.cast(tf.reduce_sum(x) * 0.0 + 40000.0, tf.int32)
            return {"s": tf.reduce_sum(tf.fill(tf.stack([side, side]), tf.reduce_mean(x)))}

    path = tmp_path_factory.mktemp("bomb") / "model"
    module = Bomb()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def tfopt_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfopt", *args], capture_output=True,
                          text=True, timeout=timeout)


def previous_output(out: Path) -> dict[str, bytes]:
    """An OUT that an earlier run wrote (a report.json with tfopt's version)."""
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"tfopt_version": "0.1.0"}))
    (out / "model.onnx").write_bytes(b"earlier artifact")
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_a_loop_that_never_ends_stops_at_the_timeout(endless, tmp_path):
    out = tmp_path / "out"
    before = previous_output(out)
    start = time.monotonic()
    run = tfopt_cli(str(endless), "-o", str(out), "--overwrite", "--timeout", "20")
    elapsed = time.monotonic() - start
    assert run.returncode == EXIT_LIMIT, run.stderr
    assert elapsed <= 30, elapsed
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("tfopt: error: stopped at the time limit") and "--timeout 20" in last
    assert "during 'the original on" in last, last  # the stage that was running
    assert "Traceback" not in run.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging left behind


def test_a_memory_bomb_stops_at_the_memory_limit(memory_bomb, tmp_path):
    out = tmp_path / "out"
    run = tfopt_cli(str(memory_bomb), "-o", str(out), "--max-memory", "2G")
    assert run.returncode == EXIT_LIMIT, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("tfopt: error: stopped at the memory limit"), last
    assert "--max-memory 2.00 GiB" in last and "during '" in last
    reached = float(last.split("reached ")[1].split(" GiB")[0])
    assert 2.0 <= reached < 3.0  # stopped near the limit, far from the 6 GB it asked for
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_api_stops_in_a_worker_and_keeps_its_process(endless, tmp_path):
    start = time.monotonic()
    with pytest.raises(LimitReached, match=r"time limit.*--timeout 3") as raised:
        tfopt.freeze(endless, tmp_path / "out", timeout=3)
    assert raised.value.exit_code == EXIT_LIMIT
    assert time.monotonic() - start < 20
    assert not (tmp_path / "out").exists()


def test_a_bounded_run_gives_the_same_result_as_an_unbounded_one(tmp_path):
    """Stages, warnings and the result come back from the worker; the output is published."""
    seen = []

    class Record(tfopt.reporting.progress.Progress):
        def stage(self, name):
            seen.append(name)
            return super().stage(name)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bounded = tfopt.freeze(SAMPLES / "keras_cnn", tmp_path / "a", targets=["onnx"],
                               calibration="random", quantize="int8", max_memory="8G",
                               progress=Record())
    plain = tfopt.freeze(SAMPLES / "keras_cnn", tmp_path / "b", targets=["onnx"],
                         calibration="random", quantize="int8")
    assert bounded.exit_code == plain.exit_code
    assert bounded.artifact("onnx").parity.max_abs_err == plain.artifact("onnx").parity.max_abs_err
    assert seen[0].startswith("load") and seen[-1] == "onnx: export and verify"
    assert any("random" in str(w.message) for w in caught)  # --calibration random's warning
    assert bounded.artifact("onnx").nodes == plain.artifact("onnx").nodes
    assert (tmp_path / "a" / "model.onnx").is_file()
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["artifacts"][0]["precision"] == "int8"


def test_bad_input_in_the_worker_keeps_its_message_and_exit_code(tmp_path):
    (tmp_path / "model.pb").write_bytes(b"\x8a\xff not a graph")
    run = tfopt_cli(str(tmp_path / "model.pb"), "-o", str(tmp_path / "out"))
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("tfopt: error:") and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_limit_flags_parse_and_are_checked():
    assert parse_size("2G") == parse_size("2GiB") == parse_size("2gb") == 2 * 2**30
    assert parse_size("1500M") == 1500 * 2**20 and parse_size("123") == 123
    with pytest.raises(ValueError):
        parse_size("two gigs")
    available = available_memory()
    assert available is not None and available > 2**28
    assert default_max_memory(2) == pytest.approx(available * 0.45, rel=0.2)
    with pytest.raises(UsageError, match="--max-memory"):
        FreezeOptions(max_memory="lots")
    with pytest.raises(UsageError, match="--timeout -1"):
        FreezeOptions(timeout=-1).validate()
    run = tfopt_cli(str(SAMPLES / "keras_cnn"), "--max-memory", "lots", timeout=60)
    assert run.returncode == 2 and "--max-memory" in run.stderr
    assert not np.isnan(default_max_memory() or 0)


def chain_graph(path: Path, length: int) -> Path:
    """A frozen GraphDef: x -> AddV2 -> AddV2 -> ... (`length` ops), the last named
    n{length-1}; built as a proto, since TF's graph building takes minutes at a million."""
    from tensorflow.core.framework import graph_pb2, types_pb2

    graph = graph_pb2.GraphDef()
    x = graph.node.add(name="x", op="Placeholder")
    x.attr["dtype"].type = types_pb2.DT_FLOAT
    previous = "x"
    for i in range(length):
        node = graph.node.add(name=f"n{i}", op="AddV2", input=[previous, previous])
        node.attr["T"].type = types_pb2.DT_FLOAT
        previous = node.name
    path.write_bytes(graph.SerializeToString())
    return path


def test_a_million_node_graph_is_refused_before_tensorflow_reads_it(tmp_path):
    source = chain_graph(tmp_path / "chain.pb", 1_000_000)
    start = time.monotonic()
    run = tfopt_cli(str(source), "--outputs", "n999999", "-o", str(tmp_path / "out"))
    assert run.returncode == 2, run.stderr
    assert time.monotonic() - start < 60
    assert run.stderr.strip().splitlines()[-1] == (
        f"tfopt: error: {source} has 1,000,001 nodes (its function calls expanded), more "
        "than --max-nodes 200,000: converting it would take hours (a 100,000-node graph "
        "takes minutes, and the time grows faster than the node count); raise --max-nodes "
        "to try anyway")
    assert not (tmp_path / "out").exists()


def test_max_nodes_counts_what_the_outputs_reach(tmp_path):
    source = chain_graph(tmp_path / "chain.pb", 300)
    with pytest.raises(tfopt.errors.InputError,
                       match=r"has 301 nodes \(its function calls expanded\), more than "
                             "--max-nodes 100"):
        tfopt.freeze(source, tmp_path / "a", outputs=["n299"], max_nodes=100, targets=["pb"])
    result = tfopt.freeze(source, tmp_path / "b", outputs=["n49"], max_nodes=100,
                          targets=["pb"])
    assert result.exit_code == 0 and result.frozen.ops["AddV2"] == 50


def nested_calls(path: Path, depth: int, calls: int = 1, recursive: bool = False) -> Path:
    """A frozen GraphDef y = f{depth-1}(x), where f{i} calls f{i-1} `calls` times in a row
    (f0 negates); recursive: f0 calls the outermost function instead."""
    from tensorflow.core.framework import graph_pb2, types_pb2

    graph = graph_pb2.GraphDef()
    x = graph.node.add(name="x", op="Placeholder")
    x.attr["dtype"].type = types_pb2.DT_FLOAT
    x.attr["shape"].shape.dim.add(size=-1)
    for i in range(depth):
        function = graph.library.function.add()
        function.signature.name = f"f{i}"
        function.signature.input_arg.add(name="a", type=types_pb2.DT_FLOAT)
        function.signature.output_arg.add(name="out", type=types_pb2.DT_FLOAT)
        previous = "a"
        if i == 0 and not recursive:
            node = function.node_def.add(name="neg", op="Neg", input=[previous])
            node.attr["T"].type = types_pb2.DT_FLOAT
            previous = "neg:y:0"
        for k in range(calls if i else int(recursive)):
            function.node_def.add(name=f"call{k}", op=f"f{(i or depth) - 1}", input=[previous])
            previous = f"call{k}:out:0"
        function.ret["out"] = previous
    graph.node.add(name="y", op=f"f{depth - 1}", input=["x"])
    path.write_bytes(graph.SerializeToString())
    return path


@pytest.mark.parametrize("depth, calls, recursive, message", [
    (1000, 1, False, "nests function calls 1,000 deep, more than --max-call-depth 100: "
                     "converting it would take hours"),
    (60, 2, False, "has 1,729,382,256,910,270,464 nodes (its function calls expanded), more "
                   "than --max-nodes 200,000"),
    (3, 1, True, "has a function that calls itself, which TensorFlow cannot run"),
])
def test_hostile_function_libraries_are_refused_at_once(tmp_path, depth, calls, recursive,
                                                        message):
    """Calls nested 1,000 deep (a minute to convert, 3,000: over ten), a library whose every
    function calls the next twice (2^60 nodes once inlined, in 5 KB), a recursive one."""
    source = nested_calls(tmp_path / "nested.pb", depth, calls, recursive)
    start = time.monotonic()
    with pytest.raises(tfopt.errors.InputError) as raised:
        tfopt.freeze(source, tmp_path / "out", targets=["pb"])
    assert time.monotonic() - start < 5
    assert str(raised.value).startswith(f"{source} {message}")
    assert not (tmp_path / "out").exists()


def test_nested_calls_within_the_limits_convert(tmp_path):
    """Direct calls (TF1's Defun), 40 deep: Grappler inlines them however small the graph
    (below 4 nodes it did not, and tf2onnx cannot read a direct call)."""
    source = nested_calls(tmp_path / "nested.pb", 40, calls=1)
    result = tfopt.freeze(source, tmp_path / "out", targets=["pb", "onnx"], max_call_depth=40)
    assert result.exit_code == 0, result.artifacts
    assert result.frozen.ops == {"Placeholder": 1, "Neg": 1, "Identity": 1}
    assert result.artifact("onnx").nodes == 1
    with pytest.raises(tfopt.errors.InputError, match="40 deep, more than --max-call-depth 39"):
        tfopt.freeze(source, tmp_path / "out2", targets=["pb"], max_call_depth=39)


def test_onnxoptimizer_is_skipped_with_its_reason_on_huge_graphs():
    import onnx
    from onnx import TensorProto, helper

    from tfopt.exporters.onnx.rewrites.maintained import QUADRATIC_FROM_NODES, onnxoptimizer
    from tfopt.passes.base import PassLog

    count = QUADRATIC_FROM_NODES + 1
    nodes = [helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"]) for i in range(count)]
    graph = helper.make_graph(nodes, "chain",
                              [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(f"v{count}", TensorProto.FLOAT,
                                                             [1])])
    model = helper.make_model(graph)
    log = PassLog()
    start = time.monotonic()
    assert onnxoptimizer(model, log) is model
    assert time.monotonic() - start < 1
    assert log.skipped and "square of the node count" in str(log.skipped)
    assert isinstance(model, onnx.ModelProto)
