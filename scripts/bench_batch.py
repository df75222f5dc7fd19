"""Batch throughput: ~12 small models converted with 1, then 2 local workers, and the same
models as single CLI runs.

    python scripts/bench_batch.py [--out bench_batch.json]

Prints models per minute for each worker count, the 2-worker speed-up, and the seconds per
model of a batch against a fresh `tfopt` process per model; writes the same as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TARGETS = "onnx,tflite,pb"
SAMPLES = ("keras_cnn", "debug_module", "lstm_gru")
# (constructor, kwargs): small keras.applications builds, weights=None
SMALL = {
    "mobilenet_v2_a035_48": ("MobileNetV2", dict(alpha=0.35, input_shape=(48, 48, 3))),
    "mobilenet_v2_a035_64": ("MobileNetV2", dict(alpha=0.35, input_shape=(64, 64, 3))),
    "mobilenet_v2_a050_64": ("MobileNetV2", dict(alpha=0.5, input_shape=(64, 64, 3))),
    "mobilenet_v3s_48": ("MobileNetV3Small", dict(input_shape=(48, 48, 3))),
    "mobilenet_v3s_64": ("MobileNetV3Small", dict(input_shape=(64, 64, 3))),
    "mobilenet_a025_64": ("MobileNet", dict(alpha=0.25, input_shape=(64, 64, 3))),
    "mobilenet_a050_64": ("MobileNet", dict(alpha=0.5, input_shape=(64, 64, 3))),
    "efficientnet_b0_32": ("EfficientNetB0", dict(input_shape=(32, 32, 3))),
    "resnet50_32": ("ResNet50", dict(input_shape=(32, 32, 3))),
}


def build_models(directory: Path) -> list[Path]:
    import keras
    from zoo import randomize

    paths = [ROOT / "saved_models" / name for name in SAMPLES]
    for name, (constructor, kwargs) in SMALL.items():
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, constructor)(weights=None, classes=10, **kwargs)
        randomize(model)
        path = directory / "models" / name
        model.export(str(path), verbose=False)
        paths.append(path)
    return paths


def batch(models: list[Path], out: Path, workers: int) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tfopt", "batch", *map(str, models), "-o",
                           str(out), "--to", TARGETS, "--workers", str(workers), "--force"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    return {"workers": workers, "seconds": round(seconds, 1), "exit_code": done.returncode,
            "failed": summary["failed"],
            "models_per_minute": round(len(models) / seconds * 60, 2)}


def single_runs(models: list[Path], out: Path) -> dict:
    times = []
    for model in models:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tfopt", str(model), "-o",
                        str(out / model.name), "--to", TARGETS, "-q", "--overwrite"],
                       capture_output=True)
        times.append(time.perf_counter() - start)
    return {"seconds": round(sum(times), 1), "per_model": [round(t, 2) for t in times]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_batch.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tfopt-bench-batch-") as tmp:
        work = Path(tmp)
        models = build_models(work)
        one = batch(models, work / "one", 1)
        two = batch(models, work / "two", 2)
        cli = single_runs(models, work / "cli")
    n = len(models)
    result = {"models": n, "targets": TARGETS, "one_worker": one, "two_workers": two,
              "speedup": round(one["seconds"] / two["seconds"], 2),
              "single_cli_runs": cli,
              "seconds_per_model": {"cli": round(cli["seconds"] / n, 2),
                                    "batch_1_worker": round(one["seconds"] / n, 2),
                                    "batch_2_workers": round(two["seconds"] / n, 2)}}
    print(f"{n} models, targets {TARGETS}")
    print(f"{'run':<22}{'seconds':>9}{'models/min':>12}{'s/model':>9}")
    print(f"{'single CLI runs':<22}{cli['seconds']:>9}{n / cli['seconds'] * 60:>12.2f}"
          f"{cli['seconds'] / n:>9.2f}")
    for label, run in (("batch, 1 worker", one), ("batch, 2 workers", two)):
        print(f"{label:<22}{run['seconds']:>9}{run['models_per_minute']:>12}"
              f"{run['seconds'] / n:>9.2f}  failed {run['failed']}")
    print(f"2 workers / 1 worker throughput: {result['speedup']}x (target >= 1.7x)")
    print(f"per-model overhead of a CLI run over a 1-worker batch: "
          f"{(cli['seconds'] - one['seconds']) / n:.2f} s")
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
