"""The command line as a user runs it, and the Python API's contract."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLES

from tfopt.commands import main
from tfopt.logs import NATIVE_LOG_LINE

REPORT_KEYS = {"tfopt_version", "seconds", "source", "inputs", "outputs", "removed", "passes",
               "frozen", "artifacts"}


def test_module_cli_prints_the_report_as_json(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "tfopt.freeze", str(SAMPLES / "debug_module"),
                          "-o", str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert printed == json.loads((out / "report.json").read_text())
    assert printed.keys() >= REPORT_KEYS
    assert {"path", "format", "signature", "nodes", "ops", "variables",
            "variable_bytes"} <= printed["source"].keys()
    assert printed["inputs"] == [{"name": "x", "dtype": "float32", "shape": [None, 8]}]
    assert {"name", "seconds", "nodes_before", "nodes_after", "changes",
            "skipped"} <= printed["passes"][0].keys()
    for artifact in printed["artifacts"]:
        assert {"format", "path", "precision", "bytes", "nodes", "ops", "fallback",
                "parity"} <= artifact.keys()
        assert {"max_abs_err", "max_rel_err", "passed", "samples"} <= artifact["parity"].keys()
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.pb", "model.tflite",
                                                      "report.html", "report.json", "saved_model"]
    assert "Traceback" not in run.stderr


def test_console_script_is_quiet_with_q(tmp_path):
    script = Path(sys.executable).parent / "tfopt"
    run = subprocess.run([str(script), str(SAMPLES / "debug_module"), "-o", str(tmp_path / "o"),
                          "--to", "pb", "-q"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    # no C++ log line (TF 2.19's Grappler logs past TF_CPP_MIN_LOG_LEVEL); what is left is
    # the model's own tf.print, run by the reference run
    assert not [line for line in run.stderr.splitlines()
                if NATIVE_LOG_LINE.match(line.encode()) or "tensorflow" in line]
    assert set(run.stderr.splitlines()) <= {"logits: [1 4]", "logits: [3 4]"}


def test_a_closed_stderr_keeps_the_exit_code(tmp_path):
    """Run with 2>&-: the error has nowhere to go, the exit code still says what happened."""
    run = subprocess.run([sys.executable, "-m", "tfopt", str(tmp_path / "missing"), "-o",
                          str(tmp_path / "o")], stdout=subprocess.PIPE, text=True, timeout=300,
                         stderr=subprocess.DEVNULL, preexec_fn=lambda: os.close(2))
    assert run.returncode == 2 and run.stdout == ""


@pytest.mark.parametrize("command", [[], ["freeze"], ["compare"], ["inspect"], ["batch"],
                                     ["report"]])
def test_every_help_page_prints(command, capsys):
    """argparse %-formats help strings: a '%' in one (90% of memory) made --help exit 1."""
    with pytest.raises(SystemExit) as done:
        main(command + ["--help"])
    assert done.value.code == 0
    page = capsys.readouterr().out
    assert page.startswith("usage: tfopt") and "Traceback" not in page
    if command in (["freeze"], ["compare"], ["batch"]):
        assert "90% of the memory available" in page


def test_summary_table_names_every_target(tmp_path, capsys):
    assert main([str(SAMPLES / "keras_cnn"), "-o", str(tmp_path / "o"), "--to", "onnx,pb"]) == 0
    table = capsys.readouterr().out
    assert "removed" in table and "optimizer" in table
    assert "\n  onnx " in table and "\n  pb " in table and "pass" in table


def test_parity_over_tolerance_exits_4(tmp_path, capsys):
    code = main([str(SAMPLES / "keras_cnn"), "-o", str(tmp_path / "o"), "--to", "onnx,pb",
                 "--atol", "0", "--rtol", "0", "-q"])
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    onnx = next(a for a in report["artifacts"] if a["format"] == "onnx")
    if onnx["parity"]["max_abs_err"] == 0:
        pytest.skip("onnxruntime matched TF bit for bit on this machine")
    assert code == 4
    assert not onnx["parity"]["passed"]
    assert "onnx outputs differ" in capsys.readouterr().err


@pytest.fixture(scope="module")
def unconvertible(tmp_path_factory) -> Path:
    """A model with Betainc, which neither ONNX nor TFLite builtins can express."""
    import tensorflow as tf

    class Special(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            a = tf.abs(x) + 1.0
            return {"y": tf.math.betainc(a, a + 1.0, tf.fill(tf.shape(x), 0.5))}

    path = tmp_path_factory.mktemp("special") / "betainc"
    tf.saved_model.save(Special(), str(path))
    return path


def test_failed_targets_exit_3_and_the_rest_is_written(unconvertible, tmp_path, capsys):
    out = tmp_path / "o"
    assert main([str(unconvertible), "-o", str(out), "-q"]) == 3
    err = capsys.readouterr().err
    assert "target onnx failed" in err and "target tflite failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["model.pb", "report.html", "report.json",
                                                      "saved_model"]
    report = json.loads((out / "report.json").read_text())
    tflite = next(a for a in report["artifacts"] if a["format"] == "tflite")
    assert tflite["status"] == "failed" and "tf.Betainc" in tflite["blocking_ops"]
    assert [a["fallback"] for a in tflite["attempts"]] == ["none", "batch_1", "select_tf_ops"]
    onnx = next(a for a in report["artifacts"] if a["format"] == "onnx")
    assert "Betainc" in onnx["error"]


def test_python_api_survives_importing_the_cli_module(tmp_path):
    import tfopt
    import tfopt.freeze

    result = tfopt.freeze(SAMPLES / "debug_module", tmp_path / "o", targets=["pb"])
    assert isinstance(result, tfopt.FreezeResult)
    assert json.loads((tmp_path / "o" / "report.json").read_text()) == \
        json.loads(result.to_json())


def test_report_has_schema_version_library_versions_and_a_precision_column(tmp_path, capsys):
    assert main([str(SAMPLES / "keras_cnn"), "-o", str(tmp_path / "o"), "--to", "pb"]) == 0
    table = capsys.readouterr().out
    assert "precision" in table and "fp32" in table
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["schema_version"] == 2
    assert report["versions"]["tensorflow"] and report["versions"]["onnx"]
    assert len(report["artifacts"][0]["sha256"]) == 64


def test_progress_lines_off_a_terminal_and_pure_json(tmp_path, capsys):
    assert main([str(SAMPLES / "keras_cnn"), "-o", str(tmp_path / "a"), "--to", "pb"]) == 0
    out = capsys.readouterr().out
    stages = [line for line in out.splitlines() if line.startswith("tfopt: ")]
    assert [s.split(" done in ")[0] for s in stages] == [
        "tfopt: load keras_cnn", "tfopt: 7 passes", "tfopt: the original on 3 verification "
        "inputs", "tfopt: pb: export and verify"]
    assert main([str(SAMPLES / "keras_cnn"), "-o", str(tmp_path / "b"), "--to", "pb",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exit_code"] == 0  # nothing but the JSON
    assert main([str(SAMPLES / "keras_cnn"), "-o", str(tmp_path / "c"), "--to", "pb",
                 "-q"]) == 0
    assert capsys.readouterr().out == ""
