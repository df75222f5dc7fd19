"""Property-based tests: whatever a user types or a manifest holds, tfopt answers with a
documented exit code (never 1, a bug) and writes nothing outside OUT."""
from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfopt.commands import main
from tfopt.errors import UsageError

CNN = SAMPLES / "keras_cnn"
FLAGS = ["--samples", "--atol", "--rtol", "--opset", "--input-shape", "--to", "--quantize",
         "--min-cosine", "--min-agreement", "--max-drop", "--mean", "--scale", "--passes",
         "--freeze-placeholder", "--inputs", "--outputs", "--tag", "--data", "--signature"]
TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"),
               max_size=12)
VALUE = st.one_of(TEXT, st.integers(-10**6, 10**6).map(str),
                  st.floats(allow_nan=True, allow_infinity=True).map(str),
                  st.lists(st.integers(-3, 300), max_size=5).map(
                      lambda d: "x=" + ",".join(map(str, d))))
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@SETTINGS
@given(args=st.lists(st.tuples(st.sampled_from(FLAGS), VALUE), max_size=4))
def test_random_flags_never_crash_and_write_nothing(args, tmp_path, capsys):
    # a missing source: everything that can be checked without the model is checked first
    before = _tree(tmp_path)
    argv = ["freeze", str(tmp_path / "missing_model"), "-o", str(tmp_path / "out")]
    for flag, value in args:
        argv += [flag, value]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's one-line errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("tfopt: error:") and "internal" not in err[0]
    assert _tree(tmp_path) == before


ROW_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), TEXT,
                      st.floats(allow_nan=True), st.lists(st.integers(-2, 5), max_size=3),
                      st.dictionaries(TEXT, st.lists(st.integers(-2, 5), max_size=3),
                                      max_size=2))
ROW = st.dictionaries(st.sampled_from(["name", "targets", "to", "samples", "atol", "rtol",
                                       "quantize", "input_shapes", "signature", "tags",
                                       "opset", "unknown_key", "passes", "int8_io"]),
                      ROW_VALUE, max_size=4)


@SETTINGS
@given(rows=st.lists(ROW, min_size=1, max_size=3))
def test_random_manifests_name_outputs_inside_out(rows, tmp_path):
    from tfopt.batch.jobs import discover
    from tfopt.options import FreezeOptions

    manifest = tmp_path / "models.jsonl"
    manifest.write_text("\n".join(json.dumps(dict(row, src=str(CNN))) for row in rows))
    out = (tmp_path / "out").resolve()
    try:
        jobs = discover([str(manifest)], FreezeOptions())
    except UsageError:
        return
    for job in jobs:
        target = Path(os.path.normpath(out / job.name))
        assert target.parent == out and target.name == job.name
        assert not job.name.startswith(".")
