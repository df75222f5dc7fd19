"""The model kinds of issues #22 and #21 (fake quants), side by side: tfopt (default flags,
every target) against tf2onnx and the stock TFLite converter on the same SavedModels.

    python scripts/bench_kinds.py [--kinds augmentation,padded_nms] [--out kinds.json]

Per kind, each converter in its own process (wall seconds, peak RSS): tfopt's exit code and
per target its status, nodes and bytes; tf2onnx's and the stock converter's exit code, error,
nodes (ops), bytes, and whether the artifact runs (onnxruntime; the pip TFLite interpreter)
and matches the original on one input (max abs error). Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import zoo  # noqa: E402
from bench import OPSET, STOCK_TFLITE, timed  # noqa: E402


def _loop_decoder(path: Path):
    zoo.greedy_decoder(path)
    return {"start": np.array([1, 2, 3], np.int32)}, None


def _augmentation(path: Path):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 64, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    for layer in (keras.layers.RandomFlip(), keras.layers.RandomRotation(0.1),
                  keras.layers.RandomZoom(0.1), keras.layers.RandomContrast(0.2),
                  keras.layers.Resizing(48, 48), keras.layers.RandomCrop(40, 40)):
        x = layer(x)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5)(x))
    model.export(str(path), verbose=False)
    feed = {"image": np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3))
            .astype(np.float32)}
    # Keras' documented inference: RandomCrop center-crops and resizes (Keras 3.15 skips it)
    crop = keras.layers.Resizing(40, 40, crop_to_aspect_ratio=True)
    head = keras.Model(model.layers[-3].input, model.output)
    resized = keras.layers.Resizing(48, 48)(feed["image"] / 255.0)
    return feed, np.asarray(head(crop(resized)))


def _mixed(policy: str):
    def build(path: Path):
        import keras

        keras.mixed_precision.set_global_policy(policy)
        try:
            keras.utils.set_random_seed(0)
            inputs = keras.Input((32, 32, 3), name="image")
            x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.Conv2D(16, 3, activation="relu")(x)
            x = keras.layers.GlobalAveragePooling2D()(x)
            outputs = keras.layers.Dense(10, dtype="float32")(x)
            keras.Model(inputs, outputs).export(str(path), verbose=False)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        return {"image": np.random.default_rng(0).standard_normal((1, 32, 32, 3))
                .astype(np.float32)}, None
    return build


def _boxes(shape: tuple) -> np.ndarray:
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 0.8, shape[:-1] + (2,))
    return np.concatenate([corner, corner + rng.uniform(0.05, 0.2, corner.shape)], -1) \
        .astype(np.float32)


def _padded_nms(path: Path):
    zoo.padded_nms_head(path, boxes=(500,), max_output=50)
    return {"boxes": _boxes((500, 4)), "scores": np.random.default_rng(1).uniform(
        0, 1, 500).astype(np.float32)}, None


def _combined_nms(boxes_per_class: int):
    def build(path: Path):
        zoo.combined_nms_head(path, batch=1, count=300, boxes_per_class=boxes_per_class,
                              classes=8, per_class=20, total=50)
        return {"boxes": _boxes((1, 300, boxes_per_class, 4)), "scores": np.random
                .default_rng(1).uniform(0, 1, (1, 300, 8)).astype(np.float32)}, None
    return build


def _causal_decoder(path: Path):
    import keras

    keras.utils.set_random_seed(0)
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(100, 32)(tokens)
    for _ in range(2):
        x = keras.layers.LayerNormalization()(
            x + keras.layers.MultiHeadAttention(4, 8)(x, x, use_causal_mask=True))
    outputs = keras.layers.Dense(100)(x)
    keras.Model(tokens, outputs).export(str(path), verbose=False)
    return {"token_ids": np.random.default_rng(0).integers(0, 100, (1, 16)).astype(np.int32)}, \
        None


def _fake_quant(path: Path):
    zoo.fake_quant_cnn(path)
    return {"image": np.random.default_rng(0).standard_normal((1, 28, 28, 1))
            .astype(np.float32)}, None


KINDS = {"while_loop_decoder": _loop_decoder, "augmentation": _augmentation,
         "mixed_float16_cnn": _mixed("mixed_float16"),
         "mixed_bfloat16_cnn": _mixed("mixed_bfloat16"), "padded_nms": _padded_nms,
         "combined_nms_shared": _combined_nms(1), "combined_nms_per_class": _combined_nms(8),
         "causal_decoder_dynamic": _causal_decoder, "fake_quant_cnn": _fake_quant}


def _original(src: Path, feed: dict) -> dict:
    import tensorflow as tf

    fn = tf.saved_model.load(str(src)).signatures["serving_default"]
    return {k: np.asarray(v) for k, v in fn(**{k: tf.constant(v) for k, v in feed.items()})
            .items()}


def _error(expected: dict | np.ndarray, got: list[np.ndarray]) -> float:
    wanted = [expected] if isinstance(expected, np.ndarray) else \
        [expected[k] for k in sorted(expected)]
    if len(wanted) != len(got):
        return float("inf")
    errors = []
    for want in wanted:  # outputs paired by shape, the peers rename them
        same = [g for g in got if g.shape == want.shape]
        errors.append(min((float(np.max(np.abs(g.astype(np.float64) - want.astype(np.float64))))
                           if g.size else 0.0) for g in same) if same else float("inf"))
    return max(errors)


def _onnx_peer(path: Path, feed: dict, expected) -> dict:
    import onnx
    import onnxruntime

    row: dict = {"bytes": path.stat().st_size,
                 "nodes": len(onnx.load(str(path), load_external_data=False).graph.node)}
    try:
        session = onnxruntime.InferenceSession(str(path))
        names = [i.name for i in session.get_inputs()]
        given = {n: feed[k] for n, k in zip(names, sorted(feed, key=lambda k: (
            k not in [n.split(":")[0] for n in names], k)))}
        row["max_abs_err"] = _error(expected, session.run(None, given))
    except Exception as exc:  # an invalid model, a refused input
        row["runs"] = f"no: {str(exc).splitlines()[0][:120]}"
    return row


def _tflite_peer(path: Path, feed: dict, expected) -> dict:
    from tfopt import compat

    row: dict = {"bytes": path.stat().st_size}
    try:
        interpreter = compat.tflite_interpreter_class()(model_path=str(path))
        ops = interpreter._get_ops_details()
        row["nodes"] = len(ops)
        row["flex"] = sorted({o["op_name"] for o in ops if o["op_name"].startswith("Flex")})
        runner = interpreter.get_signature_runner()
        got = runner(**feed)
        row["max_abs_err"] = _error(expected, [got[k] for k in sorted(got)])
    except Exception as exc:  # Flex ops, a refused input
        row["runs"] = f"no: {str(exc).splitlines()[0][:120]}"
    return row


def measure(kind: str, work: Path) -> dict:
    src = work / kind
    feed, expected = KINDS[kind](src)
    if expected is None:
        expected = _original(src, feed)
    python = sys.executable
    tfopt_run = timed([python, "-m", "tfopt", str(src), "-o", str(work / "tfopt"),
                       "--overwrite", "-q"])
    row: dict = {"tfopt": {"code": tfopt_run["code"], "seconds": tfopt_run["seconds"],
                           "rss_mb": tfopt_run["rss_mb"]}}
    report = work / "tfopt" / "report.json"
    if report.is_file():
        for artifact in json.loads(report.read_text())["artifacts"]:
            row["tfopt"][artifact["format"]] = {
                key: artifact.get(key) for key in ("status", "nodes", "bytes", "fallback")}
            row["tfopt"][artifact["format"]]["max_abs_err"] = \
                (artifact.get("parity") or {}).get("max_abs_err")
    else:
        row["tfopt"]["error"] = tfopt_run["stderr"]
    onnx_path, tflite_path = work / "tf2onnx.onnx", work / "stock.tflite"
    peer = timed([python, "-m", "tf2onnx.convert", "--saved-model", str(src), "--output",
                  str(onnx_path), "--opset", str(OPSET)])
    row["tf2onnx"] = {"code": peer["code"], "seconds": peer["seconds"], "rss_mb": peer["rss_mb"]}
    if onnx_path.is_file():
        row["tf2onnx"].update(_onnx_peer(onnx_path, feed, expected))
    else:
        row["tf2onnx"]["error"] = peer["stderr"]
    stock = timed([python, "-c", STOCK_TFLITE, str(src), str(tflite_path)])
    row["stock_tflite"] = {"code": stock["code"], "seconds": stock["seconds"],
                           "rss_mb": stock["rss_mb"]}
    if tflite_path.is_file():
        row["stock_tflite"].update(_tflite_peer(tflite_path, feed, expected))
    else:
        row["stock_tflite"]["error"] = stock["stderr"]
    return row


def _cell(entry: dict | None) -> str:
    if not entry:
        return "-"
    if entry.get("status") not in (None, "ok"):
        return entry["status"]
    if "runs" in entry or "error" in entry:
        return "fails"
    size = f"{entry['bytes'] / 1024:.1f}K" if entry.get("bytes") else "?"
    err = entry.get("max_abs_err")
    return f"{entry.get('nodes', '?')}n {size}" + (f" {err:.0e}" if err else " exact") + \
        (f" {entry['fallback']}" if entry.get("fallback") else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--out", default="bench_kinds.json")
    args = parser.parse_args()
    results = {}
    for kind in args.kinds.split(","):
        with tempfile.TemporaryDirectory(prefix="tfopt-kinds-") as work:
            results[kind] = measure(kind, Path(work))
        row = results[kind]
        print(f"{kind:24} tfopt exit {row['tfopt']['code']}: onnx {_cell(row['tfopt'].get('onnx'))}"
              f" | tflite {_cell(row['tfopt'].get('tflite'))} | pb "
              f"{_cell(row['tfopt'].get('pb'))}", flush=True)
        print(f"{'':24} tf2onnx exit {row['tf2onnx']['code']}: {_cell(row['tf2onnx'])}"
              f" | stock tflite exit {row['stock_tflite']['code']}: "
              f"{_cell(row['stock_tflite'])}", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
