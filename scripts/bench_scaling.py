"""How peak memory and time grow with the weights, per tool: the same transformer at several
widths and a CNN family at several depths, each converted by tfopt (`--to onnx`, `--to
tflite`), tf2onnx and the stock TFLite converter, each in a fresh process.

    python scripts/bench_scaling.py [--hidden 128,256,512,768] [--cap-gb 16]
        [--cnns ResNet50,ResNet101,ResNet152] [--out bench_scaling.json]

Models, built here (nothing is downloaded): `zoo.bert` (keras_hub's BertBackbone in plain
Keras: 12 layers, vocabulary 30522, sequence 128, heads hidden/64, feed-forward 4x hidden;
`model.export`) and keras.applications ResNets at 224 px with trained-looking weights.
Peak RSS is the process tree's, sampled every 0.1 s (a run past --cap-gb is killed and
recorded as such: tf2onnx needs more than 16 GB for BERT-base); seconds are wall time.

For each tool and family it fits peak = base + k x weights (least squares over the sizes
that finished) and prints k: the bytes of peak memory per byte of weights above what the
tool needs for any model.
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench import STOCK_TFLITE  # noqa: E402

from tfopt.limits import kill_tree, tree_rss  # noqa: E402

BUILD = """
import sys
sys.path.insert(0, {scripts!r})
import keras, zoo
family, size, path = sys.argv[1], sys.argv[2], sys.argv[3]
if family == "transformer":
    hidden = int(size)
    model = zoo.bert(hidden=hidden, heads=max(1, hidden // 64), intermediate=4 * hidden)
else:
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, size)(weights=None, input_shape=(224, 224, 3))
    zoo.randomize(model)
print(model.count_params() * 4)
zoo.save_serving(model, path)
"""


def run(cmd: list[str], cap: float, timeout: float = 3600) -> dict:
    """A command in a fresh process: wall seconds, the process tree's peak RSS, exit code
    (-9 when killed at the cap or the timeout)."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    peak, killed = 0, None
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        if peak > cap or time.perf_counter() - start > timeout:
            killed = f"killed past {cap / 2**30:.0f} GB" if peak > cap else "timed out"
            kill_tree(process.pid)
            break
        time.sleep(0.1)
    stderr = process.communicate()[1].decode(errors="replace")
    errors = [line for line in stderr.splitlines() if "rror" in line]
    return {"seconds": round(time.perf_counter() - start, 1), "rss_mb": round(peak / 2**20),
            "code": process.returncode, "note": killed or (errors[-1][:200] if errors and
                                                            process.returncode else None)}


def tools(src: Path, work: Path) -> dict[str, list[str]]:
    python = sys.executable
    tfopt = [python, "-m", "tfopt", str(src), "--samples", "1", "-q", "--timeout", "0",
             "--max-memory", "0"]
    return {
        "tfopt_onnx": tfopt + ["-o", str(work / "onnx"), "--to", "onnx"],
        "tfopt_tflite": tfopt + ["-o", str(work / "tflite"), "--to", "tflite"],
        "tf2onnx": [python, "-m", "tf2onnx.convert", "--saved-model", str(src), "--output",
                    str(work / "tf2onnx.onnx"), "--opset", "18"],
        "stock_tflite": [python, "-c", STOCK_TFLITE, str(src), str(work / "stock.tflite")],
    }


def fit(points: list[tuple[int, int]]) -> dict | None:
    """peak MB = base + k x weight MB, over the finished sizes."""
    if len(points) < 2:
        return None
    weights, peaks = np.array(points, dtype=float).T / 2**20
    k, base = np.polyfit(weights, peaks, 1)
    return {"k": round(float(k), 2), "base_mb": round(float(base))}


def _cell(run: dict) -> str:
    if run["code"] == 0:
        return f"{run['seconds']} s {run['rss_mb']} MB"
    return (run["note"] or "failed")[:20]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", default="128,256,512,768")
    parser.add_argument("--cnns", default="ResNet50,ResNet101,ResNet152")
    parser.add_argument("--cap-gb", type=float, default=16.0)
    parser.add_argument("--out", default="bench_scaling.json")
    args = parser.parse_args(argv)
    cap = args.cap_gb * 2**30
    families = {"transformer": [s for s in args.hidden.split(",") if s],
                "cnn": [s for s in args.cnns.split(",") if s]}
    results: dict = {}
    for family, sizes in families.items():
        rows = results.setdefault(family, {})
        for size in sizes:
            with tempfile.TemporaryDirectory(prefix="tfopt-scaling-") as tmp:
                work = Path(tmp)
                built = subprocess.run(
                    [sys.executable, "-c", BUILD.format(scripts=str(ROOT / "scripts")),
                     family, size, str(work / "model")], capture_output=True, text=True,
                    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
                if built.returncode:
                    raise SystemExit(f"building {family} {size} failed: {built.stderr[-500:]}")
                row = {"weight_bytes": int(built.stdout.split()[-1])}
                for tool, cmd in tools(work / "model", work).items():
                    row[tool] = run(cmd, cap)
                    print(f"  {family} {size} {tool}: {row[tool]}", flush=True)
                rows[size] = row
    fits = {family: {tool: fit([(row["weight_bytes"], row[tool]["rss_mb"] * 2**20)
                                for row in rows.values() if row[tool]["code"] == 0])
                     for tool in ("tfopt_onnx", "tfopt_tflite", "tf2onnx", "stock_tflite")}
            for family, rows in results.items()}
    print(f"\n{'family':<12}{'size':<11}{'weights MB':>11}" + "".join(
        f"{tool:>22}" for tool in ("tfopt_onnx", "tfopt_tflite", "tf2onnx", "stock_tflite")))
    for family, rows in results.items():
        for size, row in rows.items():
            cells = "".join(f"{_cell(row[t]):>22}" for t in
                            ("tfopt_onnx", "tfopt_tflite", "tf2onnx", "stock_tflite"))
            print(f"{family:<12}{size:<11}{row['weight_bytes'] / 2**20:>11.0f}{cells}")
        print(f"{family:<12}{'fit k':<11}{'':>11}" + "".join(
            f"{(str(f['k']) + ' (base ' + str(f['base_mb']) + ' MB)') if f else '-':>22}"
            for f in fits[family].values()))
    Path(args.out).write_text(json.dumps({"runs": results, "fits": fits}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
