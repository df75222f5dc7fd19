"""Which layers should `--quantize auto` keep in float when int8 is over budget? Two rankings
side by side on the same int8 artifacts:

- simulated: `quantize.layer_sensitivity`, 8-bit per-tensor quantization of each float
  layer's output alone, on the float model's activations (worst channel);
- measured: the int8 artifact traced against the original (`divergence.worst`, its 10 worst
  layers), ranked by the error each adds over its inputs' (worst channel);
- layers: the simulated ranking as `--quantize auto` uses it, nodes grouped into layers
  (one name scope) with the layout ops carrying their output (`quantize.ranked_layers`).

    python scripts/bench_fallback.py [--out bench_fallback.json]

Models: the digits CNN (scripts/digits.py), the same CNN with one conv channel scaled up
1000x and its reader scaled down (the same function, one huge channel), and the outlier
classifier of the tests. Per model, target and ranking, int8 with the 1, 2, 4 and 8 top
layers in float, checked on the held-out data: cosine, top-1 agreement, accuracy. Prints a
table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import digits
import zoo

COUNTS = (1, 2, 4, 8)


def outlier_cnn(directory: Path) -> tuple[Path, Path, Path]:
    """The digits CNN whose second conv has one channel 1000x larger, which the dense layer
    reading it takes 1000x smaller (ReLU commutes with a positive scale)."""
    import keras

    x_train, x_test, y_train, y_test = digits.split(0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="big"),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu", name="reader"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=25, batch_size=32, verbose=0)
    kernel, bias = model.get_layer("big").get_weights()
    kernel[..., 5] *= 1000
    bias[5] *= 1000
    model.get_layer("big").set_weights([kernel, bias])
    weights, reader_bias = model.get_layer("reader").get_weights()
    weights[5::32] /= 1000  # Flatten of [4, 4, 32]: channel 5 of each position
    model.get_layer("reader").set_weights([weights, reader_bias])
    saved = directory / "outlier_cnn"
    zoo.save_serving(model, saved)
    np.savez(directory / "cnn_calibration.npz", image=x_train[:200])
    np.savez(directory / "cnn_eval.npz", image=x_test, labels=y_test)
    return saved, directory / "cnn_calibration.npz", directory / "cnn_eval.npz"


def outlier_classifier(directory: Path) -> tuple[Path, Path, Path]:
    saved, calibration = zoo.outlier_model(directory)
    rng = np.random.default_rng(1)
    centers = np.random.default_rng(0).standard_normal((20, 64)).astype(np.float32) * 2
    labels = rng.integers(0, 20, 500)
    x = centers[labels] + rng.standard_normal((500, 64)).astype(np.float32)
    np.savez(directory / "mlp_eval.npz", x=x, labels=labels)
    return saved, calibration, directory / "mlp_eval.npz"


def digits_cnn(directory: Path) -> tuple[Path, Path, Path]:
    saved, info = digits.train(directory)
    return saved, info["calibration"], info["eval"]


MODELS = {"digits_cnn": digits_cnn, "outlier_cnn": outlier_cnn,
          "outlier_classifier": outlier_classifier}


def _metrics(report) -> dict:
    parity = report.parity
    if parity is None:
        return {"status": report.status, "error": report.error}
    return {"within_budget": parity.passed, "cosine": round(parity.cosine, 6),
            "top1_agreement": parity.top1_agreement, "accuracy": parity.accuracy}


def measure(name: str, work: Path) -> dict:
    from tfopt.api import prepare
    from tfopt.exporters import EXPORTERS, ExportOptions
    from tfopt.exporters import prepare as prepare_for
    from tfopt.options import FreezeOptions
    from tfopt.reporting.progress import Progress
    from tfopt.reporting.resources import Stages
    from tfopt.verification.artifacts import build_and_check
    from tfopt.verification.quantize import layer_sensitivity, ranked_layers

    saved, calibration, evaluation = MODELS[name](work)
    opts = FreezeOptions(quantize="int8", calibration=str(calibration),
                         eval_data=str(evaluation)).validate()
    ready = prepare(saved, opts, Stages(Progress()), time.perf_counter())
    rows: dict = {"reference_accuracy": ready.check.reference_accuracy}
    for fmt in ("tflite", "onnx"):
        model, _ = prepare_for(fmt, ready.model)
        options = ExportOptions(quantize="int8", calibration=ready.calibration)

        def build(label: str, layers=(), fmt=fmt, model=model, options=options):
            path = work / fmt / label / EXPORTERS[fmt].FILENAME
            path.parent.mkdir(parents=True)
            return build_and_check(fmt, model, path, replace(options, float_layers=tuple(
                layers)), ready.check)

        int8 = build("int8")
        start = time.perf_counter()
        nodes = [n for n, _ in sorted(layer_sensitivity(model, ready.calibration or [])
                                      .items(), key=lambda kv: -kv[1])]
        simulated = nodes
        layers = ranked_layers(model.graph_def, nodes)
        simulated_seconds = time.perf_counter() - start
        worst = (int8.divergence or {}).get("worst", [])
        measured = [r["op"] for r in sorted(worst, key=lambda r: -r["added_error"])]
        row: dict = {"int8": _metrics(int8), "rankings": {
            "simulated": {"top": simulated[:8], "seconds": round(simulated_seconds, 2)},
            "measured": {"top": measured[:8],
                         "seconds": (int8.divergence or {}).get("seconds")}}}
        row["rankings"]["layers"] = {"top": [layer[0] for layer in layers[:8]]}
        for ranking, ranked in (("simulated", [[n] for n in simulated]),
                                ("measured", [[n] for n in measured]), ("layers", layers)):
            for count in COUNTS:
                if count <= len(ranked):
                    row["rankings"][ranking][f"float{count}"] = _metrics(build(
                        f"{ranking}{count}", [n for group in ranked[:count] for n in group]))
        rows[fmt] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default="bench_fallback.json")
    args = parser.parse_args()
    results = {}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="tfopt-fallback-") as work:
            results[name] = measure(name, Path(work))
        for fmt in ("tflite", "onnx"):
            row = results[name][fmt]
            print(f"{name:20s} {fmt:7s} int8: cosine {row['int8'].get('cosine')} "
                  f"accuracy {row['int8'].get('accuracy')} "
                  f"(reference {results[name]['reference_accuracy']})")
            for ranking in ("simulated", "measured", "layers"):
                entry = row["rankings"][ranking]
                cells = [f"{count}: {entry[f'float{count}'].get('cosine')} / "
                         f"{entry[f'float{count}'].get('accuracy')}"
                         for count in COUNTS if f"float{count}" in entry]
                print(f"{'':29s}{ranking:10s} top {entry['top'][:3]}")
                print(f"{'':39s}" + "; ".join(cells))
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
