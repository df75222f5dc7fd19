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
    """Same rows from Ray tasks as from local workers, the hanging model stopped at its time
    limit by its Ray task as by the local executor."""
    pytest.importorskip("ray")
    sources = [str(models / f"good{i}") for i in range(3)] + [str(models / "hangs")]
    local = run_batch(sources, tmp_path / "local", workers=2, targets=TARGETS, timeout=25)
    remote = run_batch(sources, tmp_path / "ray", executor="ray", targets=TARGETS,
                       ray_memory_mb=512, timeout=25)
    import ray

    ray.shutdown()

    def table(out: Path):
        rows = json.loads((out / "summary.json").read_text())["rows"]
        return sorted((r["model"], r["target"], r["status"], r["cause"], r["precision"],
                       r["nodes"]) for r in rows)

    assert local.exit_code == remote.exit_code == EXIT_SOME_FAILED
    assert table(tmp_path / "local") == table(tmp_path / "ray")
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["failures_by_cause"] == {"timeout": ["hangs"]}
    hangs = next(r for r in summary["rows"] if r["model"] == "hangs")
    assert "time limit" in hangs["error"] and "--timeout 25" in hangs["error"]


def worker_pids(batch_pid: int, executor: str) -> list[int]:
    """The processes converting the batch's models: its spawned local workers, or the Ray
    workers running a task (somewhere under the batch's local Ray instance)."""
    from tfopt.limits import process_tree

    found = []
    for pid in process_tree(batch_pid)[1:]:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if (b"spawn_main" in command and executor == "local") or \
                (command.startswith(b"ray::bounded_task") and executor == "ray"):
            found.append(pid)
    return found


def outputs_on_disk(out: Path) -> dict[str, tuple[int, int]]:
    """model -> (inode, mtime) of its report.json: a reconversion changes both."""
    found = {}
    for report in out.glob("[!.]*/report.json"):  # not a staging directory
        stat = report.stat()
        found[report.parent.name] = (stat.st_ino, stat.st_mtime_ns)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_batch_under_faults_converts_every_model_once(tmp_path, executor, seed=1):
    """100 models; workers killed with -9 at random moments, then the batch itself; the
    resumed batch ends with every model converted exactly once or failed with its reason,
    and summary.json/summary.html saying what the directories hold."""
    import random
    import shutil

    rng = random.Random(seed)
    models = tmp_path / "models"
    base = scaled_model(tmp_path / "base", 1.0)
    for i in range(97):
        shutil.copytree(base, models / f"m{i:03d}")
    for i in range(3):
        shutil.copytree(base, models / f"bad{i}")
        (models / f"bad{i}" / "saved_model.pb").write_bytes(b"\x8a\xff not a proto" * 10)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tfopt", "batch", str(models), "-o", str(out),
               "--to", "pb", "--workers", "2", "--executor", executor]
    if executor == "ray":
        pytest.importorskip("ray")
    batch = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    states = out / ".batch"
    killed = 0
    deadline = time.monotonic() + 240
    while killed < 4 and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.5, 3.0))
        if len(list(states.glob("*.json"))) < 8 * (killed + 1):
            continue
        workers = worker_pids(batch.pid, executor)
        if workers:
            os.kill(rng.choice(workers), signal.SIGKILL)
            killed += 1
    while len(list(states.glob("*.json"))) < 50 and time.monotonic() < deadline:
        time.sleep(0.2)
    from tfopt.limits import process_tree

    orphans = [pid for worker in worker_pids(batch.pid, executor)
               for pid in process_tree(worker)]  # with what they started
    os.kill(batch.pid, signal.SIGKILL)  # the batch alone: its workers must die with it
    batch.wait()
    assert killed == 4 and orphans

    def alive(pid: int) -> bool:
        try:
            return " Z " not in Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False

    ends = time.monotonic() + 30
    while any(map(alive, orphans)) and time.monotonic() < ends:
        time.sleep(0.5)
    assert not [pid for pid in orphans if alive(pid)]
    converted = outputs_on_disk(out)
    crashed = {json.loads(p.read_text())["name"] for p in states.glob("*.json")
               if json.loads(p.read_text())["cause"] == "crashed"}
    assert 0 < len(crashed) <= 4 and 40 < len(converted) < 100

    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == EXIT_SOME_FAILED, done.stderr
    after = outputs_on_disk(out)
    assert {k: after[k] for k in converted} == converted  # nothing converted twice
    summary = json.loads((out / "summary.json").read_text())
    status = {}
    for row in summary["rows"]:
        assert status.setdefault(row["model"], row["status"]) == row["status"]
    good = {f"m{i:03d}" for i in range(97)}
    assert status == {**dict.fromkeys(good, "ok"), **dict.fromkeys(
        ["bad0", "bad1", "bad2"], "failed")}
    assert summary["failures_by_cause"] == {"bad input": ["bad0", "bad1", "bad2"]}
    assert set(after) == good
    assert all((out / name / "model.pb").is_file() for name in good)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".batch"]
    page = (out / "summary.html").read_text()
    assert all(name in page for name in status)
