"""Every bad input: one-line message, documented exit code, no output left, source untouched."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import SAMPLES, tree_digest

from tfopt.commands import main


def copy_sample(tmp_path: Path, name: str = "debug_module") -> Path:
    return Path(shutil.copytree(SAMPLES / name, tmp_path / "src"))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def garbage(path: Path) -> None:
    path.write_bytes(b"\x8a\xff this is not a protocol buffer \x00\x01" * 20)


def break_variables_index(src: Path) -> None:
    garbage(src / "variables" / "variables.index")


def drop_variables(src: Path) -> None:
    shutil.rmtree(src / "variables")


def truncate_variables_data(src: Path) -> None:
    truncate(next((src / "variables").glob("variables.data-*")))


def truncated_pb(src: Path) -> None:
    truncate(src / "saved_model.pb")


def garbage_pb(src: Path) -> None:
    garbage(src / "saved_model.pb")


def not_a_model(src: Path) -> None:
    shutil.rmtree(src)
    src.mkdir()
    (src / "notes.txt").write_text("hello")


CASES = [
    # (id, how to damage the source copy, extra CLI args, what the message must say)
    ("missing_path", None, [], "does not exist"),
    ("directory_not_a_model", not_a_model, [], "not a SavedModel"),
    ("truncated_saved_model_pb", truncated_pb, [], "truncated or not a SavedModel"),
    ("garbage_saved_model_pb", garbage_pb, [], "truncated or not a SavedModel"),
    ("missing_variables", drop_variables, [], "missing variables"),
    ("corrupt_variables", break_variables_index, [], "variables/ in .* is corrupt"),
    ("truncated_variables_data", truncate_variables_data, [], "cannot load .*src"),
    ("unknown_signature", lambda src: None, ["--signature", "nope"],
     "signature 'nope' not found.*available: serving_default, train"),
    ("unknown_tag", lambda src: None, ["--tag", "gpu"],
     "tag set 'gpu' not found.*available: serve"),
    ("unknown_target", lambda src: None, ["--to", "onnx,coreml"], "unknown target 'coreml'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, tmp_path, capsys):
    _, damage, extra, expected = case
    src = tmp_path / "src"
    if damage is not None:
        copy_sample(tmp_path)
        damage(src)
    before = tree_digest(src) if src.exists() else None
    out = tmp_path / "out"

    code = main([str(src), "-o", str(out), *extra])

    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("tfopt: error: "), captured.err
    assert "Traceback" not in captured.err
    import re
    assert re.search(expected, lines[0]), lines[0]
    assert not out.exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir()), "staging left behind"
    if before is not None:
        assert tree_digest(src) == before


def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    code = main([str(tmp_path / "missing"), "-o", str(tmp_path / "out"), "--debug"])
    assert code == 2
    assert "Traceback" in capsys.readouterr().err


def test_non_empty_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main([str(SAMPLES / "debug_module"), "-o", str(out), "--to", "pb"])
    assert code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    # --overwrite replaces only an output tfopt wrote (issue #12): keep.txt is not ours
    assert main([str(SAMPLES / "debug_module"), "-o", str(out), "--to", "pb", "--overwrite",
                 "-q"]) == 2
    assert "tfopt wrote" in capsys.readouterr().err
    (out / "keep.txt").unlink()
    assert main([str(SAMPLES / "debug_module"), "-o", str(out), "--to", "pb", "-q"]) == 0
    (out / "extra.txt").write_text("left in an output tfopt wrote")
    assert main([str(SAMPLES / "debug_module"), "-o", str(out), "--to", "pb", "--overwrite",
                 "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.pb", "report.html", "report.json"]


def test_output_inside_source_is_refused(tmp_path, capsys):
    src = copy_sample(tmp_path)
    before = tree_digest(src)
    assert main([str(src), "-o", str(src / "out")]) == 2
    assert "overlaps the source" in capsys.readouterr().err
    assert tree_digest(src) == before


def test_bad_data_keys_are_named(tmp_path, capsys):
    import numpy as np

    data = tmp_path / "d.npz"
    np.savez(data, wrong=np.zeros((1, 8), np.float32))
    assert main([str(SAMPLES / "debug_module"), "-o", str(tmp_path / "out"),
                 "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "missing: ['x']" in err and "unknown: ['wrong']" in err


@pytest.mark.parametrize("shape,expected", [("x=1,9", "does not fit the input's shape"),
                                            ("nope=1,8", "unknown input")])
def test_bad_input_shape_is_refused(shape, expected, tmp_path, capsys):
    assert main([str(SAMPLES / "debug_module"), "-o", str(tmp_path / "out"),
                 "--input-shape", shape]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_malformed_input_shape_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main([str(SAMPLES / "debug_module"), "-o", str(tmp_path / "out"),
              "--input-shape", "x=1,x"])
    assert caught.value.code == 2
    assert "is not name=d1,d2" in capsys.readouterr().err
