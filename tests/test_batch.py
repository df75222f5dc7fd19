"""Batch conversion: isolation (a corrupt and a hanging model), resume after a kill,
manifest overrides, and the Ray executor against the local one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tfopt.batch import EXIT_SOME_FAILED, run_batch

TARGETS = ["onnx", "pb"]


def scaled_model(path: Path, factor: float) -> Path:
    """y = relu(x @ w) * factor, as a TF2 SavedModel (fast to build and to convert)."""
    import tensorflow as tf

    class Scaled(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.random.default_rng(int(factor)).standard_normal(
                (4, 3)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.nn.relu(x @ self.w) * factor}

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def negate(self, x):
            return {"y": -(x @ self.w)}

    module = Scaled()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve,
                                                        "negate": module.negate})
    return path


def hanging_model(path: Path) -> Path:
    """Freezes fine, but running it never ends: a while loop whose condition stays true."""
    import tensorflow as tf

    class Hang(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            def cond(i, y):
                return tf.reduce_sum(y) == tf.reduce_sum(y)

            _, y = tf.while_loop(cond, lambda i, y: (i + 1, y), [tf.constant(0), x])
            return {"y": y}

    module = Hang()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    for i in range(4):
        scaled_model(root / f"good{i}", float(i + 1))
    corrupt = scaled_model(root / "corrupt", 9.0)
    (corrupt / "saved_model.pb").write_bytes(b"\x8a\xff not a protocol buffer" * 10)
    hanging_model(root / "hangs")
    return root


@pytest.mark.slow
def test_bad_models_fail_alone(models, tmp_path):
    result = run_batch([str(models)], tmp_path / "out", workers=2, timeout=25,
                       targets=TARGETS)
    assert result.exit_code == EXIT_SOME_FAILED
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["failures_by_cause"] == {"bad input": ["corrupt"], "timeout": ["hangs"]}
    ok = {r["model"] for r in summary["rows"] if r["status"] == "ok"}
    assert ok == {f"good{i}" for i in range(4)}
    assert {r["target"] for r in summary["rows"] if r["model"] == "good0"} == set(TARGETS)
    assert summary["versions"]["tensorflow"].startswith("2.")
    for name in ok:
        assert (tmp_path / "out" / name / "model.onnx").is_file()
    corrupt = next(r for r in summary["rows"] if r["model"] == "corrupt")
    assert "saved_model.pb" in corrupt["error"] and "re-export" in corrupt["error"]
    assert "| hangs | - | failed | timeout |" in (tmp_path / "out" / "summary.md").read_text()
    csv_text = (tmp_path / "out" / "summary.csv").read_text()
    assert csv_text.startswith("model,target,status,cause,error")
    # the workers kept their TF import: at most 2 + 1 replacement processes did the work
    pids = {json.loads(p.read_text()).get("pid") for p in (tmp_path / "out" / ".batch").glob("*")}
    assert len(pids - {None}) <= 3


def test_interrupted_batch_resumes_without_redoing(models, tmp_path):
    sources = [str(models / f"good{i}") for i in range(3)]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tfopt", "batch", *sources, "-o", str(out),
               "--to", "pb", "--workers", "1"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    first = out / ".batch" / "good0.json"
    deadline = time.monotonic() + 120
    while not first.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the batch and its worker, mid-run
    process.wait()
    assert first.exists()
    finished = json.loads(first.read_text())["finished_at"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(first.read_text())["finished_at"] == finished  # not redone
    summary = json.loads((out / "summary.json").read_text())
    assert "good0" in summary["skipped"]
    assert {r["model"] for r in summary["rows"] if r["status"] == "ok"} == \
        {"good0", "good1", "good2"}
    # changed options make a model out of date again
    again = subprocess.run(command[:-4] + ["--to", "onnx", "--workers", "1"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads((out / "summary.json").read_text())[
        "skipped"] == []


def test_manifest_overrides_per_model(models, tmp_path):
    manifest = tmp_path / "models.jsonl"
    manifest.write_text("\n".join(json.dumps(row) for row in [
        {"src": str(models / "good0"), "quantize": "fp16", "targets": "onnx"},
        {"src": str(models / "good1"), "name": "negated", "signature": "negate"},
        {"src": str(models / "good2")},
    ]))
    result = run_batch([str(manifest)], tmp_path / "out", workers=2, targets=["pb"])
    assert result.exit_code == 0
    rows = {(r["model"], r["target"]): r
            for r in json.loads((tmp_path / "out" / "summary.json").read_text())["rows"]}
    assert rows[("good0", "onnx")]["precision"] == "fp16" and ("good0", "pb") not in rows
    assert rows[("good2", "pb")]["precision"] == "fp32"
    report = json.loads((tmp_path / "out" / "negated" / "report.json").read_text())
    assert report["source"]["signature"] == "negate"


def test_manifest_errors_name_the_row(models, tmp_path):
    from tfopt.errors import UsageError

    manifest = tmp_path / "models.csv"
    manifest.write_text(f"src,colour\n{models / 'good0'},red\n")
    with pytest.raises(UsageError, match="row 1: unknown option"):
        run_batch([str(manifest)], tmp_path / "out")


@pytest.mark.slow
def test_ray_executor_matches_local(models, tmp_path):
    pytest.importorskip("ray")
    sources = [str(models / f"good{i}") for i in range(3)]
    local = run_batch(sources, tmp_path / "local", workers=2, targets=TARGETS)
    remote = run_batch(sources, tmp_path / "ray", executor="ray", targets=TARGETS,
                       ray_memory_mb=512)
    import ray

    ray.shutdown()

    def table(out: Path):
        rows = json.loads((out / "summary.json").read_text())["rows"]
        return sorted((r["model"], r["target"], r["status"], r["precision"], r["nodes"])
                      for r in rows)

    assert local.exit_code == remote.exit_code == 0
    assert table(tmp_path / "local") == table(tmp_path / "ray")
