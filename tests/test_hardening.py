"""Hostile and malformed inputs, a full disk, kills mid-run, concurrent runs, side-effect
ops and reproducible bytes: the contract that tfopt never loses data, never runs a
stranger's code unasked, and says why it stops.

Every refused case: its documented exit code, one line on stderr naming the problem and the
fix, no traceback, no OUT, nothing new beside OUT, and the source's bytes unchanged."""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES, tree_digest

from tfopt.commands import main

CNN = SAMPLES / "keras_cnn"
TFOPT = [sys.executable, "-m", "tfopt"]


@pytest.fixture(scope="session")
def hostile(tmp_path_factory) -> dict[str, Path]:
    """Models that misbehave, built once: each is a SavedModel directory or a .keras file."""
    import keras
    import tensorflow as tf

    root = tmp_path_factory.mktemp("hostile")
    spec = tf.TensorSpec([None, 3], tf.float32, name="x")
    made = {}

    class WritesFile(tf.Module):
        @tf.function(input_signature=[spec])
        def serve(self, x):
            tf.io.write_file(str(root / "written_by_model.txt"), tf.strings.as_string(x[0, 0]))
            return {"y": x * 2.0}

    class NanWeights(tf.Module):
        def __init__(self):
            self.w = tf.Variable([1.0, float("nan"), 2.0])

        @tf.function(input_signature=[spec])
        def serve(self, x):
            return {"y": x * self.w}

    class PyFunction(tf.Module):
        @tf.function(input_signature=[spec])
        def serve(self, x):
            return {"y": tf.py_function(lambda a: a * 2.0, [x], tf.float32)}

    class Strings(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"length": tf.strings.length(text)}

    for name, cls in (("writes_file", WritesFile), ("nan_weights", NanWeights),
                      ("py_function", PyFunction), ("strings", Strings)):
        module = cls()
        made[name] = root / name
        tf.saved_model.save(module, str(made[name]), signatures={"serving_default": module.serve})
    inputs = keras.Input((3,), name="x")
    lam = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    made["lambda"] = root / "lambda.keras"
    lam.save(made["lambda"])
    return made


def _files(root: Path) -> dict:
    bad = root / "data"
    bad.mkdir()
    (bad / "not_zip.npz").write_text("hello")
    np.savez(bad / "pickled.npz", x=np.array([{"a": 1}], dtype=object))
    (bad / "npy_dir").mkdir()
    np.save(bad / "npy_dir" / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (root / "a_file").write_text("x")
    (root / "empty_dir").mkdir()
    (root / "not_a_model.txt").write_text("x")
    broken = root / "truncated"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes((CNN / "saved_model.pb").read_bytes()[:100])
    (root / "loop_a").symlink_to(root / "loop_b")
    (root / "loop_b").symlink_to(root / "loop_a")
    (root / "dangling").symlink_to(root / "nowhere")
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    full = root / "full"
    full.mkdir()
    (full / "x").write_text("x")
    return {"bad": bad}


# (id, argv after the source, source, out, exit code, message pattern); {r} is the tmp root
CASES = [
    ("samples_zero", ["--samples", "0"], CNN, "out", 2, "at least 1 sample"),
    ("samples_negative", ["--samples", "-3"], CNN, "out", 2, "at least 1 sample"),
    ("samples_text", ["--samples", "many"], CNN, "out", 2, "invalid int"),
    ("atol_negative", ["--atol", "-1"], CNN, "out", 2, "--atol -1.0: must be at least 0"),
    ("atol_nan", ["--atol", "nan"], CNN, "out", 2, "finite"),
    ("rtol_inf", ["--rtol", "inf"], CNN, "out", 2, "finite"),
    ("cosine_above_one", ["--min-cosine", "2"], CNN, "out", 2, "between"),
    ("opset_999", ["--opset", "999"], CNN, "out", 2, "--opset 999 is outside"),
    ("opset_3", ["--opset", "3"], CNN, "out", 2, "--opset 3 is outside"),
    ("shape_negative", ["--input-shape", "x=-1,3"], CNN, "out", 2, "positive"),
    ("shape_zero", ["--input-shape", "x=0,3"], CNN, "out", 2, "positive"),
    ("shape_garbage", ["--input-shape", "x"], CNN, "out", 2, "name=d1,d2"),
    ("unknown_target", ["--to", "onnx,coreml"], CNN, "out", 2, "unknown target 'coreml'"),
    ("unknown_pass", ["--passes", "prune,magic"], CNN, "out", 2, "unknown pass 'magic'"),
    ("unknown_flag", ["--frobnicate"], CNN, "out", 2, "unrecognized arguments"),
    ("int8_without_data", ["--quantize", "int8"], CNN, "out", 2, "needs calibration"),
    ("data_missing", ["--data", "{r}/nope.npz"], CNN, "out", 2, "does not exist"),
    ("data_not_zip", ["--data", "{r}/data/not_zip.npz"], CNN, "out", 2, "not an .npz"),
    ("data_pickled", ["--data", "{r}/data/pickled.npz"], CNN, "out", 2, "pickled"),
    ("calibration_pickled", ["--quantize", "int8", "--calibration", "{r}/data/npy_dir"],
     CNN, "out", 2, "pickled"),
    ("eval_missing", ["--quantize", "fp16", "--eval", "{r}/nope.npz"], CNN, "out", 2,
     "does not exist"),
    ("out_is_source", [], CNN, str(CNN), 2, "overlaps the source"),
    ("out_inside_source", [], CNN, str(CNN / "variables" / "x"), 2, "overlaps the source"),
    ("out_is_file", [], CNN, "{r}/a_file", 2, "is a file"),
    ("out_dangling_symlink", [], CNN, "{r}/dangling", 2, "does not exist; pass a real"),
    ("out_name_too_long", [], CNN, "{r}/" + "n" * 300, 6, "File name too long"),
    ("out_not_empty", [], CNN, "{r}/full", 2, "not empty; pass --overwrite"),
    ("overwrite_foreign", ["--overwrite"], CNN, "{r}/foreign", 2, "tfopt wrote.*notes.txt"),
    ("source_missing", [], "{r}/missing_model", "out", 2, "does not exist"),
    ("source_symlink_loop", [], "{r}/loop_a", "out", 2, "symlink that leads nowhere"),
    ("source_empty_dir", [], "{r}/empty_dir", "out", 2, "not a SavedModel"),
    ("source_text_file", [], "{r}/not_a_model.txt", "out", 2, "not a model tfopt reads"),
    ("source_truncated", [], "{r}/truncated", "out", 2, "truncated or not a SavedModel"),
    ("unknown_signature", ["--signature", "nope"], CNN, "out", 2, "signature 'nope' not found"),
    ("tf1_flag_on_tf2", ["--outputs", "y"], CNN, "out", 2, "apply to TF1 graphs"),
    ("writes_file", [], "writes_file", "out", 2, "WriteFile.*--allow-io-ops"),
    ("py_function", [], "py_function", "out", 2, "calls back into Python"),
    ("nan_weights", [], "nan_weights", "out", 2, "NaN or Inf"),
    ("keras_lambda", [], "lambda", "out", 2, "--unsafe-keras"),
]


def _exists(path: Path) -> bool:
    try:
        return path.exists() or path.is_symlink()
    except OSError:  # a name too long to exist
        return False


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_cleanly(case, hostile, tmp_path, capsys):
    _, argv, src, out, code, pattern = case
    _files(tmp_path)
    fill = {"r": str(tmp_path)}
    src = hostile[src] if isinstance(src, str) and src in hostile else \
        Path(str(src).format(**fill))
    out = tmp_path / out if out == "out" else Path(out.format(**fill))
    source_digest = tree_digest(src) if src.exists() else None
    existed = _exists(out)
    out_digest = tree_digest(out) if existed and out.exists() else None
    beside = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else None

    try:
        got = main([str(src), "-o", str(out), *[a.format(**fill) for a in argv]])
    except SystemExit as exc:  # argparse's own errors
        got = exc.code
    err = capsys.readouterr().err.strip()
    assert got == code, err
    lines = err.splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("tfopt: error:") and re.search(pattern, lines[0]), lines[0]
    if source_digest is not None:
        assert tree_digest(src) == source_digest
    if existed:
        assert out_digest is None or tree_digest(out) == out_digest  # untouched
    else:
        assert not _exists(out)
    if beside is not None:
        assert sorted(p.name for p in out.parent.iterdir()) == beside
    assert not (hostile["writes_file"].parent / "written_by_model.txt").exists()


def test_side_effect_ops_run_only_with_consent(hostile, tmp_path):
    import tfopt

    written = hostile["writes_file"].parent / "written_by_model.txt"
    result = tfopt.freeze(hostile["writes_file"], tmp_path / "out", targets=["pb"],
                          allow_io_ops=True)
    assert written.exists()  # the user consented, the model ran
    written.unlink()
    assert result.security["allowed"] is True
    assert [o["op"] for o in result.security["io_ops"]] == ["WriteFile"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["security"]["io_ops"][0]["family"] == "file"


def test_inspect_lists_side_effect_ops(hostile):
    from tfopt.inspection import inspect

    report = inspect(hostile["writes_file"])
    assert [o["op"] for o in report["security"]["io_ops"]] == ["WriteFile"]
    report = inspect(hostile["py_function"])  # inspecting never runs the model
    assert report["unsupported_ops"]["pb"] == report["unsupported_ops"]["saved_model"] == \
        ["EagerPyFunc"]


def test_string_inputs_convert_to_tensorflow_targets(hostile, tmp_path):
    import tfopt

    result = tfopt.freeze(hostile["strings"], tmp_path / "out")
    status = {a.format: a.status for a in result.artifacts}
    assert {k: v for k, v in status.items() if k != "tflite"} == \
        {"onnx": "failed", "pb": "ok", "saved_model": "ok"}
    assert "StringLength" in result.artifact("onnx").error
    tflite = result.artifact("tflite")
    if tflite.status == "ok":  # TF 2.15-2.19 give the interpreter the Flex delegate
        assert tflite.ops == {"FlexStringLength": 1}
    else:  # TF 2.20 on do not: the failure names the op
        assert "StringLength" in tflite.error
    assert all(a.parity.passed for a in result.artifacts if a.status == "ok")


def test_batch_names_never_leave_out(tmp_path, capsys):
    from tfopt.batch.jobs import check_name

    out = tmp_path / "out"
    for name in ("../../x", str(tmp_path / "abs"), ".", "..", "a/../../b", ".batch",
                 "summary.json", "a\\b", ""):
        manifest = tmp_path / "m.jsonl"
        manifest.write_text(json.dumps({"src": str(CNN), "name": name}) + "\n")
        assert main(["batch", str(manifest), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "name" in err[0], err
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]
    check_name("resnet50_v2", "row 1")  # an ordinary name passes
    manifest.write_text("\n".join(json.dumps({"src": str(CNN), "name": "twin"})
                                  for _ in range(2)))
    assert main(["batch", str(manifest), "-o", str(out)]) == 2
    assert "twin" in capsys.readouterr().err and not out.exists()


def test_batch_row_with_mistyped_values_is_a_usage_error(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    for row in ({"targets": 5}, {"samples": "x"}, {"atol": [1]}, {"input_shapes": "{bad"}):
        manifest.write_text(json.dumps(dict(row, src=str(CNN))) + "\n")
        assert main(["batch", str(manifest), "-o", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "row 1" in err and "internal error" not in err, err


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(TFOPT + args, capture_output=True, text=True, timeout=600, **kwargs)


def _complete(out: Path) -> bool:
    report = json.loads((out / "report.json").read_text())
    return all(Path(a["path"]).exists() for a in report["artifacts"] if a["status"] == "ok")


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_file_size_limit_publishes_nothing(tmp_path):
    out = tmp_path / "out"
    assert _run([str(CNN), "-o", str(out), "--to", "pb,onnx", "-q"]).returncode == 0
    before = tree_digest(out)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    done = _run([str(CNN), "-o", str(out), "--overwrite", "-q"], preexec_fn=limit)
    assert done.returncode == 6, done.stderr
    assert "File too large" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert tree_digest(out) == before and _hidden(tmp_path) == []


@pytest.mark.slow
def test_kill_at_any_moment_leaves_a_complete_out(tmp_path):
    out = tmp_path / "out"
    args = [str(CNN), "-o", str(out), "--overwrite", "-q"]
    assert _run(args).returncode == 0
    start = time.monotonic()
    assert _run(args).returncode == 0
    duration = time.monotonic() - start
    for fraction in (0.3, 0.55, 0.75, 0.9, 0.97):
        process = subprocess.Popen(TFOPT + args, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(duration * fraction)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert _complete(out), f"OUT incomplete after a kill at {fraction:.0%} of the run"
    assert _run(args).returncode == 0 and _complete(out)
    assert _hidden(tmp_path) == []  # the killed runs' staging directories are gone


def test_concurrent_runs_on_one_out_publish_one_at_a_time(tmp_path):
    out = tmp_path / "out"
    args = [str(CNN), "-o", str(out), "--to", "pb", "-q"]
    first = subprocess.Popen(TFOPT + args + ["--overwrite"], stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(TFOPT + args, stderr=subprocess.PIPE, text=True)
    codes = sorted([first.wait(timeout=600), second.wait(timeout=600)])
    # one publishes; the other either publishes after it (--overwrite) or is refused
    assert codes in ([0, 0], [0, 2]), (first.stderr.read(), second.stderr.read())
    assert _complete(out) and _hidden(tmp_path) == []


def test_overwrite_replaces_only_what_tfopt_wrote(tmp_path):
    import tfopt
    from tfopt.errors import UsageError

    out = tmp_path / "out"
    tfopt.freeze(CNN, out, targets=["pb"])
    (out / "notes.txt").write_text("mine")  # tfopt's report.json is still there
    tfopt.freeze(CNN, out, targets=["pb"], overwrite=True)
    assert not (out / "notes.txt").exists()
    (out / "report.json").unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"notes\.txt"):
        tfopt.freeze(CNN, out, targets=["pb"], overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_stale_staging_directories_are_removed(tmp_path):
    from tfopt.reporting.output import remove_stale_staging

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".out.tfopt-{dead.pid}-0123abcd"
    live = tmp_path / f".out.tfopt-{os.getpid()}-0123abcd"
    for directory in (stale, live):
        directory.mkdir()
    assert remove_stale_staging(tmp_path) == [stale.name]
    assert live.exists() and not stale.exists()


@pytest.mark.parametrize("sample", ["keras_cnn", "lstm_gru"])
def test_same_input_same_bytes(sample, tmp_path):
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        done = _run([str(SAMPLES / sample), "-o", str(out), "-q"])
        assert done.returncode == 0, done.stderr
        report = json.loads((out / "report.json").read_text())
        digests.append({a["format"]: a["sha256"] for a in report["artifacts"]})
    assert set(digests[0]) == {"onnx", "tflite", "pb", "saved_model"}
    assert digests[0] == digests[1]


def _keras_zip(path: Path, weights_member: str = "model.weights.h5", zeros: int = 0) -> Path:
    """A .keras-shaped zip; `zeros` bytes of zeros as its weights (deflated about 230:1)."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("metadata.json", "{}")
        with archive.open(weights_member, "w", force_zip64=True) as member:
            chunk = bytes(min(zeros, 64 << 20))
            for _ in range(zeros // max(len(chunk), 1)):
                member.write(chunk)
    return path


def test_a_zip_bomb_keras_file_is_refused_before_anything_unpacks(tmp_path):
    import tensorflow  # noqa: F401  (its import is the process's cost, not the check's)

    import tfopt
    from tfopt.errors import InputError

    bomb = _keras_zip(tmp_path / "bomb.keras", zeros=2 << 30)  # 2 GiB of zeros in ~9 MB
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"would unpack to 2,147,483,\d+ bytes \(\d+x its "
                                         r"compressed size\), over the limit of [\d,]+ bytes; "
                                         r"if you trust the file, pass --max-unpacked-bytes"):
        tfopt.freeze(bomb, tmp_path / "out")
    assert time.perf_counter() - start < 1
    assert not (tmp_path / "out").exists() and sorted(os.listdir(tmp_path)) == ["bomb.keras"]
    # the limit is the user's to raise: past it, Keras reads the file (and finds no model)
    with pytest.raises(InputError, match="cannot load Keras file"):
        tfopt.freeze(bomb, tmp_path / "out", max_unpacked_bytes=3 << 30)


def test_a_keras_archive_with_a_path_leaving_it_is_refused(tmp_path):
    import tfopt
    from tfopt.errors import InputError

    evil = _keras_zip(tmp_path / "evil.keras", weights_member="../../model.weights.h5")
    with pytest.raises(InputError, match=r"member '\.\./\.\./model\.weights\.h5', whose path "
                                         r"leaves the archive"):
        tfopt.freeze(evil, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["evil.keras"]
