"""Peak memory and wall time of whole conversions, tfopt against tf2onnx and the stock TFLite
converter in the same run, with tfopt's own seconds and peak RSS per stage.

    python scripts/bench_memory.py [--models resnet50,resnet50_saved,embedding]
                                   [--embedding-gb 2.16]
                                   [--out bench_memory.json]

Models, built here (nothing is downloaded):
- resnet50: keras.applications.ResNet50 at 224 px, 25.6 M parameters (102 MB), trained-
  looking weights (scripts/zoo.py), exported with `model.export`;
- resnet50_saved: the same model saved with `tf.saved_model.save(model, path)` (its
  SavedModel holds the whole Keras object graph: the stock converter's memory differs);
- embedding: a Keras model whose Embedding holds --embedding-gb of float32 (past protobuf's
  2 GB by default), exported with `model.export`.

Each conversion is a fresh process under /usr/bin/time -v: tf2onnx (`--opset 18`; for the
embedding also `--large_model`), the stock converter (`from_saved_model().convert()`), and
tfopt with `--to onnx`, `--to tflite` and all four targets (each verifies its artifacts;
for the embedding also `--to onnx,saved_model`, whose peak is also given over the weights).
Prints one table of seconds, peak RSS and the ratios to the peer, then tfopt's stages, and
writes everything as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench import STOCK_TFLITE, timed  # noqa: E402

BUILD = """
import sys, numpy as np, keras
sys.path.insert(0, {scripts!r})
kind, path, gb = sys.argv[1], sys.argv[2], float(sys.argv[3])
keras.utils.set_random_seed(0)
if kind.startswith("resnet50"):
    import zoo
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    zoo.randomize(model)
else:
    rows = int(gb * 2**30 / 4000)
    ids = keras.Input((8,), dtype="int32", name="ids")
    table = keras.layers.Embedding(rows, 1000, embeddings_initializer="zeros")
    pooled = keras.layers.GlobalAveragePooling1D()(table(ids))
    model = keras.Model(ids, keras.layers.Dense(3)(pooled))
    table.embeddings.assign(np.random.default_rng(0).standard_normal((rows, 1000),
                                                                     dtype=np.float32))
if kind == "resnet50_saved":
    import tensorflow as tf
    tf.saved_model.save(model, path)
else:
    model.export(path, verbose=False)
"""


def run_all(kind: str, src: Path, work: Path) -> dict:
    python = sys.executable
    runs = {}
    tf2onnx = [python, "-m", "tf2onnx.convert", "--saved-model", str(src), "--output",
               str(work / "tf2onnx.onnx"), "--opset", "18"]
    runs["tf2onnx"] = timed(tf2onnx + (["--large_model"] if kind == "embedding" else []),
                            timeout=3600)
    runs["stock_tflite"] = timed([python, "-c", STOCK_TFLITE, str(src), str(work / "s.tflite")],
                                 timeout=3600)
    combos = [("tfopt_onnx", "onnx"), ("tfopt_tflite", "tflite"),
              ("tfopt_all", "onnx,tflite,pb,saved_model")]
    if kind == "embedding":  # the target: ONNX and SavedModel within 3.5x the weights
        combos.insert(1, ("tfopt_onnx_sm", "onnx,saved_model"))
    for name, targets in combos:
        out = work / name
        run = timed([python, "-m", "tfopt", str(src), "-o", str(out), "--to", targets, "-q"],
                    timeout=3600)
        report = out / "report.json"
        if report.is_file():
            data = json.loads(report.read_text())
            run["stages"] = data["resources"]["stages"]
            run["artifacts"] = {a["format"]: a["status"] for a in data["artifacts"]}
        runs[name] = run
    return runs


def ratio(a: dict, b: dict, key: str) -> float | None:
    if a.get("code") not in (0, None) or b.get("code") not in (0, None):
        return None
    return round(a[key] / b[key], 3) if a.get(key) and b.get(key) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,resnet50_saved,embedding")
    parser.add_argument("--embedding-gb", type=float, default=2.16)
    parser.add_argument("--out", default="bench_memory.json")
    args = parser.parse_args(argv)
    results = {}
    for kind in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="tfopt-bench-mem-") as tmp:
            work = Path(tmp)
            built = timed([sys.executable, "-c", BUILD.format(scripts=str(ROOT / "scripts")),
                           kind, str(work / "model"), str(args.embedding_gb)], timeout=3600)
            if built["code"]:
                raise SystemExit(f"building {kind} failed: {built['stderr']}")
            runs = run_all(kind, work / "model", work)
        peers = {"tfopt_onnx": "tf2onnx", "tfopt_tflite": "stock_tflite",
                 "tfopt_all": "tf2onnx", "tfopt_onnx_sm": "tf2onnx"}
        peers = {k: v for k, v in peers.items() if k in runs}
        for name, peer in peers.items():
            runs[name]["vs"] = peer
            runs[name]["rss_ratio"] = ratio(runs[name], runs[peer], "rss_mb")
            runs[name]["seconds_ratio"] = ratio(runs[name], runs[peer], "seconds")
        if kind == "embedding" and runs["tfopt_onnx_sm"].get("rss_mb"):
            runs["tfopt_onnx_sm"]["rss_over_weights"] = round(
                runs["tfopt_onnx_sm"]["rss_mb"] * 2**20 / (args.embedding_gb * 2**30), 2)
        results[kind] = runs
        print(f"\n{kind}")
        print(f"  {'run':<14}{'exit':>5}{'seconds':>9}{'peak MB':>9}  {'vs':<13}"
              f"{'rss x':>7}{'time x':>7}")
        for name, run in runs.items():
            print(f"  {name:<14}{run['code']:>5}{run['seconds']:>9.1f}"
                  f"{run['rss_mb'] or 0:>9.0f}  {run.get('vs', ''):<13}"
                  f"{run.get('rss_ratio') or '-':>7}{run.get('seconds_ratio') or '-':>7}")
        for name, run in runs.items():
            if "rss_over_weights" in run:
                print(f"  {name}: peak RSS = {run['rss_over_weights']} x the weight bytes")
        for name in peers:
            for stage in runs[name].get("stages", []):
                print(f"    {name:<14}{stage['stage'][:40]:<42}{stage['seconds']:>7.1f} s"
                      f"{stage['peak_rss_mb']:>8.0f} MB")
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
