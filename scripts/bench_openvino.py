"""tfopt `--to openvino` against OpenVINO's own converter (`openvino.convert_model`, what
`ovc` runs) on the same SavedModels.

    python scripts/bench_openvino.py [--models ResNet50,MobileNetV2] [--runs 50]
                                     [--quantize none|fp16] [--out bench_openvino.json]

Per model, each converter in its own process (wall seconds, peak RSS; tfopt's includes
verifying its IR): the IR's op count (Parameter, Result and Constant aside), bytes, OpenVINO
CPU latency (2 threads, f32, median of --runs single-sample inferences, both IRs timed
alternately in this process) and max abs error against TF on one input. Models: ResNet50
at 224 px, MobileNetV2 at 96 px (keras.applications, randomized weights), a TF1 training
graph, an int64 lookup table, Keras augmentation layers, a fake-quant CNN. Prints a table
and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import zoo  # noqa: E402
from bench import THREADS, timed  # noqa: E402

# ovc compresses weights to fp16 by default: compared with tfopt --quantize fp16, and saved
# as f32 when compared with tfopt's default
OVC = """
import sys, openvino
openvino.save_model(openvino.convert_model(sys.argv[1]), sys.argv[2],
                    compress_to_fp16=sys.argv[3] == "fp16")
"""


def _keras(name: str, size: int):
    def make(path: Path) -> dict:
        import keras

        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3),
                                                  classes=1000)
        zoo.randomize(model)
        zoo.save_serving(model, path)
        return {_input_name(path): np.random.default_rng(0).standard_normal(
            (1, size, size, 3)).astype(np.float32)}
    return make


def _input_name(path: Path) -> str:
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    return next(iter(signature.structured_input_signature[1]))


def _tf1_training(path: Path) -> dict:
    from tf1_models import SHAPE, build_training_graph, save_saved_model

    graph, session, handles = build_training_graph()
    save_saved_model(graph, session, handles, path)
    session.close()
    return {"x": np.random.default_rng(0).standard_normal((1,) + SHAPE).astype(np.float32)}


def _lookup(path: Path) -> dict:
    import tensorflow as tf

    class Prices(tf.Module):
        def __init__(self):
            self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant([3, 7, 9], tf.int64), tf.constant([1.5, 2.5, 3.5])), 0.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="item")])
        def serve(self, item):
            return {"price": self.table.lookup(item) * 2.0}

    module = Prices()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return {"item": np.array([3, 4, 9], np.int64)}


def _augmentation(path: Path) -> dict:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.RandomFlip()(inputs)
    x = keras.layers.RandomRotation(0.1)(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    zoo.save_serving(model, path)
    return {"image": np.random.default_rng(0).uniform(0, 1, (1, 32, 32, 3))
            .astype(np.float32), "reference": "keras"}


def _fake_quant(path: Path) -> dict:
    zoo.fake_quant_cnn(path)
    return {"image": np.random.default_rng(0).standard_normal((1, 28, 28, 1))
            .astype(np.float32)}


MODELS = {"ResNet50": _keras("ResNet50", 224), "MobileNetV2": _keras("MobileNetV2", 96),
          "tf1_training_graph": _tf1_training, "lookup_table": _lookup,
          "augmentation": _augmentation, "fake_quant_cnn": _fake_quant}


def _original(src: Path, feed: dict) -> dict:
    import tensorflow as tf

    fn = tf.saved_model.load(str(src)).signatures["serving_default"]
    return {k: np.asarray(v) for k, v in fn(**{k: tf.constant(v) for k, v in feed.items()})
            .items()}


def _compiled(path: Path):
    import openvino

    core = openvino.Core()
    model = core.read_model(str(path))
    ops = Counter(op.get_type_name() for op in model.get_ordered_ops()
                  if op.get_type_name() not in ("Parameter", "Result", "Constant"))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                 "INFERENCE_NUM_THREADS": THREADS})
    return compiled.create_infer_request(), model, ops


def _error(request, model, feed: dict, expected: dict) -> float:
    """Max abs error, outputs paired by shape (converters name them differently)."""
    inputs = {}
    for port in model.inputs:  # by name, then by position
        names = {n.split(":")[0] for n in port.get_names()}
        key = next((k for k in feed if k in names), list(feed)[len(inputs)])
        inputs[port.get_any_name()] = feed[key]
    result = request.infer(inputs)
    got = [np.array(result[i]) for i in range(len(model.outputs))]
    errors = []
    for want in expected.values():
        same = [g for g in got if g.shape == want.shape]
        errors.append(min(float(np.max(np.abs(g.astype(np.float64) - want))) for g in same)
                      if same else float("inf"))
    return max(errors)


def measure(name: str, work: Path, runs: int, quantize: str) -> dict:
    src = work / name
    feed = MODELS[name](src)
    keras_reference = feed.pop("reference", None) == "keras"
    row: dict = {}
    tfopt_run = timed([sys.executable, "-m", "tfopt", str(src), "-o", str(work / "tfopt"),
                       "--to", "openvino", "--quantize", quantize, "--overwrite", "-q"])
    ovc_run = timed([sys.executable, "-c", OVC, str(src), str(work / "ovc.xml"), quantize])
    paths = {"tfopt": work / "tfopt" / "model.xml", "ovc": work / "ovc.xml"}
    expected = None if keras_reference else _original(src, feed)
    requests = {}
    for tool, run in (("tfopt", tfopt_run), ("ovc", ovc_run)):
        row[tool] = {"code": run["code"], "seconds": run["seconds"], "rss_mb": run["rss_mb"]}
        if not paths[tool].is_file():
            row[tool]["error"] = run["stderr"]
            continue
        request, model, ops = _compiled(paths[tool])
        requests[tool] = (request, model)
        row[tool].update(ops=sum(ops.values()), bytes=paths[tool].stat().st_size
                         + paths[tool].with_suffix(".bin").stat().st_size)
        if expected is not None:
            row[tool]["max_abs_err"] = _error(request, model, feed, expected)
    if keras_reference and "tfopt" in requests:  # tfopt verified its IR against Keras
        report = json.loads((work / "tfopt" / "report.json").read_text())
        row["tfopt"]["max_abs_err"] = report["artifacts"][0]["parity"]["max_abs_err"]
    if len(requests) == 2:
        for tool, ms in _latencies(requests, feed, runs).items():
            row[tool]["latency_ms"] = ms
    return row


def _latencies(requests: dict, feed: dict, runs: int) -> dict[str, float]:
    """Median single-sample latency of each IR, timed alternately (a noisy machine slows
    both alike)."""
    inputs = {}
    for tool, (_, model) in requests.items():
        inputs[tool] = {port.get_any_name(): value for port, value in
                        zip(model.inputs, feed.values())}
        for _ in range(3):
            requests[tool][0].infer(inputs[tool])
    times: dict[str, list[float]] = {tool: [] for tool in requests}
    for _ in range(runs):
        for tool, (request, _) in requests.items():
            start = time.perf_counter()
            request.infer(inputs[tool])
            times[tool].append((time.perf_counter() - start) * 1000)
    return {tool: round(statistics.median(values), 3) for tool, values in times.items()}


def _cell(entry: dict) -> str:
    if "ops" not in entry:
        return f"exit {entry['code']}: {entry.get('error', '')[:60]}"
    error = entry.get("max_abs_err")
    latency = entry.get("latency_ms")
    return (f"{entry['ops']} ops, {entry['bytes'] / 1024:.0f} KB, "
            f"{'-' if latency is None else f'{latency:.2f} ms'}, err "
            f"{'-' if error is None else f'{error:.1e}'}, {entry['seconds']:.1f} s, "
            f"{entry['rss_mb'] / 1024:.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--quantize", choices=("none", "fp16"), default="none",
                        help="fp16: tfopt --quantize fp16 against ovc's default fp16 weights")
    parser.add_argument("--out", default="bench_openvino.json")
    args = parser.parse_args()
    results = {}
    print(f"{'model':20s} {'tfopt --to openvino':58s} ovc")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="tfopt-ov-") as work:
            results[name] = measure(name, Path(work), args.runs, args.quantize)
        print(f"{name:20s} {_cell(results[name]['tfopt']):58s} {_cell(results[name]['ovc'])}")
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
