"""Recurrent TFLite artifacts: tfopt's dynamic-batch WHILE against the batch-1 WHILE that the
converter's `_experimental_default_to_single_batch_in_tensor_list_ops` gives (tfopt 0.2's
fallback), on Keras 3 LSTM, GRU, SimpleRNN and bidirectional LSTM classifiers.

    python scripts/bench_recurrent.py [--runs 200] [--steps 50] [--out bench_recurrent.json]

Prints, per model, the ops and bytes of both artifacts and the median latency (2 threads,
LiteRT with XNNPACK) of one sample, and of 4 samples: one batch-4 call of the dynamic artifact
against four batch-1 calls of the fixed one; writes the same as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfopt.verification.quantize import median_ms

THREADS, FEATURES, UNITS = 2, 16, 64


def build(kind: str, steps: int):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((steps, FEATURES), name="seq")
    layer = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU,
             "simple_rnn": keras.layers.SimpleRNN}
    if kind == "bidirectional_lstm":
        h = keras.layers.Bidirectional(keras.layers.LSTM(UNITS))(inputs)
    elif kind == "lstm_gru":
        h = keras.layers.GRU(UNITS)(keras.layers.LSTM(UNITS, return_sequences=True)(inputs))
    else:
        h = layer[kind](UNITS)(inputs)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def fixed_batch_artifact(model_dir: Path, work: Path) -> bytes:
    """The batch-1 WHILE: tfopt's frozen graph, batch fixed to 1, the converter's flag."""
    from tfopt.exporters.base import save_inference_model
    from tfopt.exporters.tflite import _batch_one, _converter
    from tfopt.loaders import load
    from tfopt.options import FreezeOptions
    from tfopt.passes import run_pipeline

    opts = FreezeOptions()
    model, _ = run_pipeline(load(model_dir, opts.load_options()).model, opts.passes)
    fixed = _batch_one(model)
    save_inference_model(fixed, work / "fixed")
    return _converter(str(work / "fixed"), fixed.signature, "batch_1").convert()


def latency(path: Path, x: np.ndarray, calls: int, runs: int) -> float:
    from ai_edge_litert.interpreter import Interpreter

    run = Interpreter(model_path=str(path), num_threads=THREADS).get_signature_runner()
    chunks = np.split(x, calls)
    run(seq=chunks[0])  # allocate at this batch size
    return median_ms(lambda: [run(seq=c) for c in chunks], runs)


def main(argv: list[str] | None = None) -> int:
    import tfopt
    from tfopt.exporters.tflite import op_names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default="bench_recurrent.json")
    args = parser.parse_args(argv)
    rows = []
    rng = np.random.default_rng(0)
    for kind in ("lstm", "gru", "simple_rnn", "bidirectional_lstm", "lstm_gru"):
        with tempfile.TemporaryDirectory(prefix="tfopt-bench-rnn-") as tmp:
            work = Path(tmp)
            model = build(kind, args.steps)
            model.export(str(work / "model"), verbose=False)
            result = tfopt.freeze(work / "model", work / "out", targets=["tflite"])
            dynamic = Path(result.artifact("tflite").path)
            fixed = work / "fixed.tflite"
            fixed.write_bytes(fixed_batch_artifact(work / "model", work))
            x = rng.standard_normal((4, args.steps, FEATURES)).astype(np.float32)
            row = {"model": kind, "steps": args.steps, "units": UNITS,
                   "dynamic_ops": sum(Counter(op_names(dynamic)).values()),
                   "fixed_ops": sum(Counter(op_names(fixed)).values()),
                   "dynamic_bytes": dynamic.stat().st_size, "fixed_bytes": fixed.stat().st_size,
                   "dynamic_1_ms": latency(dynamic, x[:1], 1, args.runs),
                   "fixed_1_ms": latency(fixed, x[:1], 1, args.runs),
                   "dynamic_4_ms": latency(dynamic, x, 1, args.runs),
                   "fixed_4x1_ms": latency(fixed, x, 4, args.runs)}
            row["ratio_1"] = row["dynamic_1_ms"] / row["fixed_1_ms"]
            row["ratio_4"] = row["dynamic_4_ms"] / row["fixed_4x1_ms"]
            rows.append(row)
    header = ("model", "dynamic_ops", "fixed_ops", "dynamic_1_ms", "fixed_1_ms", "ratio_1",
              "dynamic_4_ms", "fixed_4x1_ms", "ratio_4")
    print("  ".join(f"{h:>13}" for h in header))
    for row in rows:
        print("  ".join(f"{row[h]:>13.3f}" if isinstance(row[h], float) else f"{row[h]:>13}"
                        for h in header))
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
