"""Benchmark tfopt against tf2onnx (+ onnxslim / onnxsim) and the stock TFLite converter.

    python scripts/bench.py [--models MobileNetV2,ResNet50] [--runs 30] [--out bench.json]

For every zoo model, in the same run: conversion seconds and peak RSS of a fresh process per
converter (/usr/bin/time -v), artifact nodes and bytes (and bytes over the physical minimum,
parameter count x 4), batch-norm leftovers, onnxruntime and TFLite latency (median of
--runs, 2 threads, the same input), and parity against TF. Then the pass pipeline's scaling
on a synthetic 10k- and 100k-node graph. Prints a table and writes JSON; every ratio has a
geometric-mean row.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import zoo  # noqa: E402

from tfopt.verification.quantize import median_ms  # noqa: E402

SAMPLES = ("keras_cnn", "lstm_gru")
THREADS = 2
OPSET = 18


def timed(cmd: list[str], timeout: int = 900) -> dict:
    """Run a command in a fresh process: wall seconds, peak RSS (MB), exit code, stderr tail."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    wall = time.perf_counter() - start
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()
             and not line.startswith("\t") and not line.startswith("Command ")]
    tail = ([line for line in lines if "rror" in line] or lines)[-1:]
    return {"seconds": round(wall, 2), "rss_mb": round(int(rss.group(1)) / 1024, 1) if rss
            else None, "code": done.returncode, "stderr": tail[0][:300] if tail else ""}


STOCK_TFLITE = """
import sys, tensorflow as tf
flatbuffer = tf.lite.TFLiteConverter.from_saved_model(sys.argv[1]).convert()
open(sys.argv[2], "wb").write(flatbuffer)
"""


def convert_all(src: Path, work: Path) -> dict:
    """Each converter in its own process, one after the other."""
    python = sys.executable
    runs = {}
    # the frozen .pb rides along with the ONNX run, for the batch-norm leftover check
    for target, targets in (("onnx", "onnx,pb"), ("tflite", "tflite")):
        out = work / f"tfopt_{target}"
        run = timed([python, "-m", "tfopt", str(src), "-o", str(out), "--to", targets,
                     "--samples", "1", "--overwrite", "-q"])
        report = out / "report.json"
        if report.is_file():
            data = json.loads(report.read_text())
            run["report"] = data
            # the process without verification (and the .pb): what a converter does
            extra = data["timings"].get("reference", 0) + sum(
                (a.get("verify_seconds") or 0) + (a["seconds"] if a["format"] == "pb" else 0)
                for a in data["artifacts"])
            run["conversion_seconds"] = round(run["seconds"] - extra, 2)
        runs[f"tfopt_{target}"] = run
    runs["tf2onnx"] = timed([python, "-m", "tf2onnx.convert", "--saved-model", str(src),
                             "--output", str(work / "tf2onnx.onnx"), "--opset", str(OPSET)])
    runs["tf2onnx"]["conversion_seconds"] = runs["tf2onnx"]["seconds"]
    runs["stock_tflite"] = timed([python, "-c", STOCK_TFLITE, str(src),
                                  str(work / "stock.tflite")])
    runs["stock_tflite"]["conversion_seconds"] = runs["stock_tflite"]["seconds"]
    return runs


def peer_best(path: Path, work: Path) -> dict:
    """tf2onnx followed by onnxslim or by onnxsim: node counts of each."""
    import onnx

    counts = {"tf2onnx": len(onnx.load(str(path)).graph.node)}
    try:
        import onnxslim

        counts["tf2onnx+onnxslim"] = len(onnxslim.slim(onnx.load(str(path))).graph.node)
    except Exception as exc:  # report, do not stop the bench
        counts["tf2onnx+onnxslim"] = f"failed: {str(exc)[:80]}"
    try:
        import onnxsim

        model, ok = onnxsim.simplify(onnx.load(str(path)))
        counts["tf2onnx+onnxsim"] = len(model.graph.node) if ok else "check failed"
    except Exception as exc:  # onnxsim is an optional bench extra
        counts["tf2onnx+onnxsim"] = f"failed: {str(exc)[:80]}"
    return counts


def onnx_session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def tflite_runner(path: Path):
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=THREADS)
    interpreter.allocate_tensors()
    inputs = interpreter.get_input_details()
    output = interpreter.get_output_details()[0]

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inputs[0]["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(output["index"])
    return run


def onnx_leftovers(path: Path) -> int:
    """Mul/Add with one operand a Conv/MatMul/Gemm output and the other a constant."""
    import onnx

    graph = onnx.load(str(path)).graph
    constants = {i.name for i in graph.initializer} | {
        n.output[0] for n in graph.node if n.op_type == "Constant"}
    producer = {o: n.op_type for n in graph.node for o in n.output}
    return sum(1 for n in graph.node if n.op_type in ("Mul", "Add") and len(n.input) == 2
               and any(producer.get(a) in ("Conv", "MatMul", "Gemm") and b in constants
                       for a, b in (n.input, n.input[::-1])))


def pb_leftovers(path: Path) -> int:
    """FusedBatchNorm*, Rsqrt, and Mul/Add(V2) of a conv/matmul output by a constant."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    ops = {n.name: n.op for n in graph_def.node}
    linear = {"Conv2D", "DepthwiseConv2dNative", "MatMul", "Conv3D", "Conv2DBackpropInput"}

    def op_of(ref: str) -> str:
        return ops.get(ref.lstrip("^").split(":")[0], "")

    count = sum(1 for n in graph_def.node if n.op.startswith("FusedBatchNorm") or n.op == "Rsqrt")
    count += sum(1 for n in graph_def.node if n.op in ("Mul", "Add", "AddV2") and len(n.input) >= 2
                 and any(op_of(a) in linear and op_of(b) == "Const"
                         for a, b in (n.input[:2], n.input[1::-1])))
    return count


def measure(name: str, src: Path, params: int | None, runs: int) -> dict:
    """Everything for one model."""
    import tensorflow as tf

    row = {"model": name}
    with tempfile.TemporaryDirectory(prefix="tfopt-bench-") as tmp:
        work = Path(tmp)
        conversions = convert_all(src, work)
        row["conversion"] = {k: {f: v.get(f) for f in ("conversion_seconds", "rss_mb", "code",
                                                        "stderr")}
                             for k, v in conversions.items()}
        artifacts = {
            "tfopt_onnx": work / "tfopt_onnx" / "model.onnx",
            "tf2onnx": work / "tf2onnx.onnx",
            "tfopt_tflite": work / "tfopt_tflite" / "model.tflite",
            "stock_tflite": work / "stock.tflite",
        }
        report = conversions["tfopt_onnx"].get("report")
        if report is None:
            row["error"] = conversions["tfopt_onnx"]["stderr"]
            return row
        spec = report["inputs"][0]
        shape = [1 if d is None else d for d in spec["shape"]]
        x = np.random.default_rng(0).standard_normal(shape).astype(spec["dtype"])
        loaded = tf.saved_model.load(str(src))
        serve = loaded.signatures["serving_default"]
        expected = next(iter(serve(**{spec["name"]: tf.constant(x)}).values())).numpy()
        row["artifacts"] = {}
        for key, path in artifacts.items():
            info: dict = {"ok": path.is_file()}
            if not path.is_file():
                row["artifacts"][key] = info
                continue
            info["bytes"] = path.stat().st_size
            if params:
                info["bytes_over_minimum"] = round(info["bytes"] / (params * 4), 4)
            try:
                if path.suffix == ".onnx":
                    import onnx

                    info["nodes"] = len(onnx.load(str(path)).graph.node)
                    info["bn_leftovers"] = onnx_leftovers(path)
                    session = onnx_session(path)
                    feed = {session.get_inputs()[0].name: x}
                    out = session.run(None, feed)[0]
                    info["latency_ms"] = median_ms(
                        lambda session=session, feed=feed: session.run(None, feed), runs)
                else:
                    from tfopt.exporters.tflite import op_names

                    info["nodes"] = len(op_names(path))
                    run = tflite_runner(path)
                    out = run(x)
                    info["latency_ms"] = median_ms(lambda run=run, x=x: run(x), runs)
                info["max_abs_err"] = float(np.abs(out.astype(np.float64) - expected).max())
            except Exception as exc:  # a peer artifact that does not run is a result too
                info["error"] = str(exc).splitlines()[0][:200]
            row["artifacts"][key] = info
        frozen_pb = work / "tfopt_onnx" / "model.pb"
        row["pb_bn_leftovers"] = pb_leftovers(frozen_pb) if frozen_pb.is_file() else None
        if artifacts["tf2onnx"].is_file():
            row["peers"] = peer_best(artifacts["tf2onnx"], work)
    return row


def scaling(blocks_small: int = 1_250, factor: int = 10, repeats: int = 3) -> dict:
    """Pass-pipeline seconds on a chain of conv+BN+relu blocks at two sizes (the best of
    `repeats` runs: one run's time varies by 20% here), next to the floor: one sweep that
    reads each node's op and inputs, the least any pass does."""
    import gc

    from tfopt.model import Model, TensorSpec
    from tfopt.passes import DEFAULT_PIPELINE, run_pipeline

    result = {}
    for blocks in (blocks_small, blocks_small * factor):
        graph_def = synthetic_chain(blocks)
        model = Model(graph_def, [TensorSpec("x", "float32", (1, 4, 4, 4))],
                      [TensorSpec("y", "float32", (1, 4, 4, 4))])
        gc.freeze()  # as run_pipeline does
        start = time.perf_counter()
        sum(len(node.op) + len(node.input) for node in graph_def.node)
        floor = time.perf_counter() - start
        gc.unfreeze()
        seconds, reports = math.inf, []
        for _ in range(repeats):
            start = time.perf_counter()
            _, run = run_pipeline(model, DEFAULT_PIPELINE)
            if time.perf_counter() - start < seconds:
                seconds, reports = time.perf_counter() - start, run
        result[str(len(graph_def.node))] = {
            "seconds": round(seconds, 2), "floor_seconds": round(floor, 4),
            "passes": {r.name: r.seconds for r in reports}}
    small, large = sorted(result, key=int)
    result["ratio"] = round(result[large]["seconds"] / result[small]["seconds"], 2)
    result["floor_ratio"] = round(result[large]["floor_seconds"]
                                  / result[small]["floor_seconds"], 2)
    result["node_ratio"] = round(int(large) / int(small), 2)
    return result


def synthetic_chain(blocks: int):
    """x -> [Conv2D(1x1) -> FusedBatchNormV3 -> Relu] * blocks -> y, written as NodeDefs."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    graph_def = tf.compat.v1.GraphDef()
    x = graph_def.node.add(name="x", op="Placeholder")
    x.attr["dtype"].type = tf.float32.as_datatype_enum
    for d in (1, 4, 4, 4):
        x.attr["shape"].shape.dim.add(size=d)
    kernel = tf.make_tensor_proto(rng.standard_normal((1, 1, 4, 4)).astype(np.float32))
    vector = tf.make_tensor_proto(rng.uniform(0.5, 1.5, 4).astype(np.float32))
    previous = "x"
    for i in range(blocks):
        def const(name: str, proto):
            node = graph_def.node.add(name=name, op="Const")
            node.attr["dtype"].type = tf.float32.as_datatype_enum
            node.attr["value"].tensor.CopyFrom(proto)
            return name
        conv = graph_def.node.add(name=f"b{i}/conv", op="Conv2D",
                                  input=[previous, const(f"b{i}/kernel", kernel)])
        conv.attr["T"].type = tf.float32.as_datatype_enum
        conv.attr["strides"].list.i[:] = [1, 1, 1, 1]
        conv.attr["padding"].s = b"SAME"
        norm = graph_def.node.add(name=f"b{i}/bn", op="FusedBatchNormV3", input=[
            conv.name] + [const(f"b{i}/{p}", vector) for p in ("gamma", "beta", "mean", "var")])
        norm.attr["T"].type = norm.attr["U"].type = tf.float32.as_datatype_enum
        norm.attr["epsilon"].f = 1e-3
        norm.attr["is_training"].b = False
        relu = graph_def.node.add(name=f"b{i}/relu", op="Relu", input=[norm.name])
        relu.attr["T"].type = tf.float32.as_datatype_enum
        previous = relu.name
    y = graph_def.node.add(name="y", op="Identity", input=[previous])
    y.attr["T"].type = tf.float32.as_datatype_enum
    return graph_def


def geomean(values) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and v > 0 and math.isfinite(v)]
    return round(math.exp(sum(math.log(v) for v in values) / len(values)), 3) if values else None


def ratios(row: dict) -> dict:
    """tfopt over peer, per measure (lower is better for all)."""
    conv, art = row.get("conversion", {}), row.get("artifacts", {})

    def get(d, *keys):
        for k in keys:
            d = d.get(k) if isinstance(d, dict) else None
        return d

    def ratio(a, b):
        return round(a / b, 3) if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and b > 0 else None

    peers = row.get("peers", {})
    best_peer = min((v for v in peers.values() if isinstance(v, int)), default=None)
    return {
        "onnx_seconds": ratio(get(conv, "tfopt_onnx", "conversion_seconds"),
                              get(conv, "tf2onnx", "conversion_seconds")),
        "onnx_rss": ratio(get(conv, "tfopt_onnx", "rss_mb"), get(conv, "tf2onnx", "rss_mb")),
        "tflite_seconds": ratio(get(conv, "tfopt_tflite", "conversion_seconds"),
                                get(conv, "stock_tflite", "conversion_seconds")),
        "onnx_nodes_vs_best_peer": ratio(get(art, "tfopt_onnx", "nodes"), best_peer),
        "ort_latency": ratio(get(art, "tfopt_onnx", "latency_ms"),
                             get(art, "tf2onnx", "latency_ms")),
        "tflite_latency": ratio(get(art, "tfopt_tflite", "latency_ms"),
                                get(art, "stock_tflite", "latency_ms")),
        "onnx_bytes_over_minimum": get(art, "tfopt_onnx", "bytes_over_minimum"),
        "tflite_bytes_over_minimum": get(art, "tfopt_tflite", "bytes_over_minimum"),
    }


def table(rows: list[dict], means: dict) -> str:
    keys = list(means)
    short = {"onnx_seconds": "onnx_s", "onnx_rss": "onnx_rss", "tflite_seconds": "tfl_s",
             "onnx_nodes_vs_best_peer": "nodes/peer", "ort_latency": "ort_ms",
             "tflite_latency": "tfl_ms", "onnx_bytes_over_minimum": "onnx_B/min",
             "tflite_bytes_over_minimum": "tfl_B/min"}
    lines = ["ratios tfopt / peer (lower is better); B/min: artifact bytes / (params x 4)",
             f"{'model':<18}" + "".join(f"{short[k]:>11}" for k in keys)
             + f"{'bn_left':>9}{'onnx_err':>10}{'tfl_err':>10}"]

    def cell(v):
        return f"{v:>11.3f}" if isinstance(v, (int, float)) else f"{'-':>11}"

    for row in rows:
        art = row.get("artifacts", {})
        errs = [art.get(k, {}).get("max_abs_err") for k in ("tfopt_onnx", "tfopt_tflite")]
        left = row.get("pb_bn_leftovers"), art.get("tfopt_onnx", {}).get("bn_leftovers")
        lines.append(f"{row['model']:<18}" + "".join(cell(row['ratios'][k]) for k in keys)
                     + f"{'/'.join(str(v) for v in left):>9}"
                     + "".join(f"{e:>10.1e}" if isinstance(e, float) else f"{'-':>10}"
                               for e in errs))
    lines.append(f"{'geomean':<18}" + "".join(cell(means[k]) for k in keys))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated subset of the zoo and samples")
    parser.add_argument("--runs", type=int, default=30, help="latency runs per artifact")
    parser.add_argument("--out", default="bench.json", help="JSON output path")
    parser.add_argument("--scaling-blocks", type=int, default=1_250,
                        help="blocks of the small synthetic graph (x10 for the large one)")
    parser.add_argument("--scaling-only", action="store_true",
                        help="print the scaling JSON and stop (how the bench runs it)")
    args = parser.parse_args(argv)
    if args.scaling_only:
        print(json.dumps(scaling(args.scaling_blocks)))
        return 0
    names = args.models.split(",") if args.models else list(SAMPLES) + list(zoo.ARCHITECTURES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tfopt-zoo-") as zoo_dir:
        for name in names:
            start = time.perf_counter()
            if name in SAMPLES:
                src, params = ROOT / "saved_models" / name, None
            else:
                model = zoo.build(name)
                params = model.count_params()
                src = Path(zoo_dir) / name
                zoo.save_serving(model, src)
            row = measure(name, src, params, args.runs)
            row["params"] = params
            row["ratios"] = ratios(row)
            row["bench_seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(f"{name}: {row['bench_seconds']} s", file=sys.stderr, flush=True)
    means = {k: geomean(r["ratios"][k] for r in rows) for k in rows[0]["ratios"]}
    result = {"rows": rows, "geomean": means}
    if args.scaling_blocks:  # a fresh process, as each conversion above: the zoo's runs
        # leave this one's heap larger, which made the 100k run 10% slower
        done = subprocess.run([sys.executable, __file__, "--scaling-only", "--scaling-blocks",
                               str(args.scaling_blocks)], capture_output=True, text=True,
                              check=True)
        result["scaling"] = json.loads(done.stdout.strip().splitlines()[-1])
    print(table(rows, means))
    if "scaling" in result:
        s = result["scaling"]
        print(f"pass pipeline scaling: {s['node_ratio']}x nodes -> {s['ratio']}x seconds "
              f"(one read of each node: {s['floor_ratio']}x) ("
              + ", ".join(f"{k} nodes {v['seconds']} s" for k, v in s.items() if k.isdigit())
              + ")")
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
