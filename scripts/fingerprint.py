"""What a refactor must not change: per model, every pass's node counts and change/skip
counts, and per artifact its op histogram and parity.

    python scripts/fingerprint.py --out before.json [--models keras_cnn,MobileNetV2]
    python scripts/fingerprint.py --out after.json && diff before.json after.json

Models: the bundled samples and a few zoo architectures (scripts/zoo.py), plus the zoo with
--quantize int8 on one model, so that quantized ONNX and TFLite are covered too.
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

import zoo  # noqa: E402

SAMPLES = ("keras_cnn", "debug_module", "lstm_gru")
ZOO = ("MobileNetV2", "MobileNetV3Small", "EfficientNetB0", "ConvNeXtTiny")


def fingerprint(result) -> dict:
    return {
        "passes": [(p.name, p.nodes_before, p.nodes_after, len(p.changes), len(p.skipped))
                   for p in result.passes],
        "removed": result.removed,
        "artifacts": {a.format: {"status": a.status, "nodes": a.nodes, "ops": a.ops,
                                 "precision": a.precision,
                                 "steps": [s.get("nodes", s.get("error")) for s in a.steps],
                                 "passed": a.parity.passed if a.parity else None,
                                 "max_abs_err": float(f"{a.parity.max_abs_err:.1e}")
                                 if a.parity else None}
                      for a in result.artifacts}}


def main() -> int:
    import tfopt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", help="comma-separated subset")
    args = parser.parse_args()
    wanted = set(args.models.split(",")) if args.models else None
    found = {}
    with tempfile.TemporaryDirectory() as work:
        sources = {name: ROOT / "saved_models" / name for name in SAMPLES}
        for name in ZOO:
            if wanted is None or name in wanted:
                sources[name] = zoo.export(name, Path(work))
        for name, src in sources.items():
            if wanted is not None and name not in wanted:
                continue
            result = tfopt.freeze(src, Path(work) / "out" / name)
            found[name] = fingerprint(result)
            print(name, {f: (a["nodes"], a["passed"]) for f, a in found[name]["artifacts"].items()},
                  flush=True)
        if wanted is None or "keras_cnn_int8" in wanted:
            result = tfopt.freeze(sources["keras_cnn"], Path(work) / "out" / "int8",
                                  targets=["onnx", "tflite"], quantize="int8",
                                  calibration="random")
            found["keras_cnn_int8"] = fingerprint(result)
    Path(args.out).write_text(json.dumps(found, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
