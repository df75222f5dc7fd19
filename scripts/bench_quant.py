"""Quantization on a real task: a small CNN trained on scikit-learn's digits, frozen at fp32,
fp16, dynamic, int8 and int16x8 with one calibration set, each checked on the test split.

    python scripts/bench_quant.py [--runs 300] [--out bench_quant.json]

Prints accuracy, bytes (and the ratio to fp32) and latency per artifact (median of --runs
single-sample inferences in this process, 2 threads: XNNPACK for TFLite, onnxruntime for
ONNX), and writes the same as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import digits

from tfopt.verification.quantize import median_ms

MODES = ("none", "fp16", "dynamic", "int8", "int16x8")
THREADS = 2


def runner(fmt: str, path: str):
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = THREADS
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=path, num_threads=THREADS)
    run = interpreter.get_signature_runner()
    return lambda x: run(image=x)


def main(argv: list[str] | None = None) -> int:
    import tfopt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--out", default="bench_quant.json")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tfopt-bench-quant-") as tmp:
        root = Path(tmp)
        saved, info = digits.train(root)
        images = np.load(info["eval"])["image"]
        x, batch = images[:1], images[:64]
        for mode in MODES:
            result = tfopt.freeze(saved, root / mode, targets=["tflite", "onnx"],
                                  quantize=mode, calibration=info["calibration"],
                                  eval_data=info["eval"])
            for artifact in result.artifacts:
                row = {"mode": mode, "target": artifact.format, "status": artifact.status,
                       "precision": artifact.precision, "bytes": artifact.bytes,
                       "original_accuracy": result.reference_accuracy,
                       "accuracy": artifact.parity.accuracy if artifact.parity else None,
                       "within_budget": bool(artifact.parity and artifact.parity.passed),
                       "error": artifact.error}
                if artifact.status == "ok":
                    run = runner(artifact.format, artifact.path)
                    row["latency_ms"] = median_ms(lambda run=run: run(x), args.runs, warmup=10)
                    row["latency_b64_ms"] = median_ms(lambda run=run: run(batch),
                                                      max(args.runs // 10, 20), warmup=10)
                rows.append(row)
    fp32 = {r["target"]: r for r in rows if r["mode"] == "none"}
    for row in rows:
        base = fp32[row["target"]]
        if row.get("bytes") and base.get("bytes"):
            row["bytes_vs_fp32"] = round(row["bytes"] / base["bytes"], 3)
        for key in ("latency_ms", "latency_b64_ms"):
            if row.get(key) and base.get(key):
                row[key.replace("_ms", "_vs_fp32")] = round(row[key] / base[key], 3)
    print(f"digits CNN, Keras test accuracy {info['accuracy']:.4f}")
    print(f"{'target':<8}{'mode':<9}{'precision':<14}{'accuracy':>9}{'bytes':>9}{'x fp32':>8}"
          f"{'ms b1':>9}{'x fp32':>8}{'ms b64':>9}{'x fp32':>8}  budget")
    for r in sorted(rows, key=lambda r: (r["target"], MODES.index(r["mode"]))):
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        print(f"{r['target']:<8}{r['mode']:<9}{r['precision']:<14}{acc:>9}"
              f"{r['bytes'] or 0:>9}{r.get('bytes_vs_fp32', '-'):>8}"
              f"{r.get('latency_ms', '-'):>9}{r.get('latency_vs_fp32', '-'):>8}"
              f"{r.get('latency_b64_ms', '-'):>9}{r.get('latency_b64_vs_fp32', '-'):>8}  "
              f"{'within' if r['within_budget'] else 'OVER'}"
              f"{' ' + r['error'] if r['error'] else ''}")
    Path(args.out).write_text(json.dumps({"keras_accuracy": info["accuracy"], "rows": rows},
                                         indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
