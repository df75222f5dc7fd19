"""The bundled samples converted under several TensorFlow releases, side by side: each
artifact's status, node count and max error per environment, and whether its op histogram is
the same in all.

    python scripts/compare_versions.py --python VENV_215/bin/python --python VENV_221/bin/python
                                       [--samples keras_cnn,debug_module,lstm_gru]
                                       [--out compare_versions.json]

Each --python is an environment with tfopt installed (`pip install "tensorflow==X.*"`, then
`pip install -e .`); every conversion is a fresh `python -m tfopt SAMPLE --json` there with
default flags. "same" means every environment gives the same op histogram; max errors are
listed as measured (each environment verifies against its own TensorFlow run of the source).
Exits 1 when a conversion fails or the histograms differ.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ("keras_cnn", "debug_module", "lstm_gru")


def convert(python: str, sample: str, out: Path) -> dict:
    done = subprocess.run([python, "-m", "tfopt", str(ROOT / "saved_models" / sample), "-o",
                           str(out), "--json", "--overwrite"], capture_output=True, text=True)
    if not done.stdout.strip():
        return {"exit_code": done.returncode, "error": done.stderr.strip().splitlines()[-1:]}
    report = json.loads(done.stdout)
    return {"exit_code": done.returncode, "versions": report["versions"],
            "seconds": report["seconds"],
            "artifacts": {a["format"]: {"status": a["status"], "nodes": a["nodes"],
                                        "ops": a["ops"],
                                        "max_abs_err": (a["parity"] or {}).get("max_abs_err")}
                          for a in report["artifacts"]}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", required=True,
                        help="an environment's interpreter (repeat for each)")
    parser.add_argument("--samples", default=",".join(SAMPLES))
    parser.add_argument("--out", default="compare_versions.json")
    args = parser.parse_args()
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as work:
        for index, python in enumerate(args.python):
            for sample in args.samples.split(","):
                run = convert(python, sample, Path(work) / f"{index}-{sample}")
                tf = run.get("versions", {}).get("tensorflow", f"env {index}")
                results.setdefault(tf, {})[sample] = run
    envs = list(results)
    print(f"{'sample':<13} {'target':<12} " + " ".join(f"{'TF ' + e:>22}" for e in envs)
          + "  ops")
    consistent = True
    for sample in args.samples.split(","):
        runs = [results[e][sample] for e in envs]
        failed = [r for r in runs if "artifacts" not in r]
        if failed:
            consistent = False
            print(f"{sample:<13} failed: {failed}")
            continue
        for target in runs[0]["artifacts"]:
            cells, ops = [], set()
            for run in runs:
                found = run["artifacts"].get(target, {})
                ops.add(json.dumps(found.get("ops"), sort_keys=True))
                err = found.get("max_abs_err")
                shown = f"{err:.1e}" if isinstance(err, float) else str(err)
                cells.append(f"{found.get('status', '-')} {found.get('nodes')} {shown}")
            same = len(ops) == 1 and all(r["artifacts"].get(target, {}).get("status") == "ok"
                                           for r in runs)
            consistent &= same
            print(f"{sample:<13} {target:<12} " + " ".join(f"{c:>22}" for c in cells)
                  + ("  same" if same else "  DIFFER"))
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"cells: status, nodes, max abs error; written to {args.out}")
    return 0 if consistent else 1


if __name__ == "__main__":
    sys.exit(main())
