"""The shape of the code: stages layered with no import running up or in a cycle, each
target's knowledge inside its exporter, no module named like a standard-library one, and one
set of options behind the API, every command and batch manifests."""
from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from tfopt.commands import parser
from tfopt.options import SOURCE, FreezeOptions, option_fields, parse_options

PACKAGE = Path(__file__).resolve().parent.parent / "tfopt"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the tfopt modules it imports when it is imported (module level only:
    imports inside functions run later, and TYPE_CHECKING blocks never)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        edges = set()
        for statement in ast.parse(path.read_text()).body:
            if isinstance(statement, ast.Import):
                edges |= {a.name for a in statement.names if a.name in known}
            elif isinstance(statement, ast.ImportFrom) and statement.module \
                    and statement.level == 0 and statement.module.startswith("tfopt"):
                for alias in statement.names:
                    child = f"{statement.module}.{alias.name}"
                    edges.add(child if child in known else statement.module)
        graph[name] = edges - {name}
    return graph


def test_imports_form_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_module_imports_from_a_layer_above_it():
    # the contracts are pyproject.toml's [tool.importlinter]; import-linter follows imports
    # inside functions too, which the cycle check above leaves out
    pytest.importorskip("importlinter")
    done = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import "
                           "lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"],
                          cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_no_module_outside_the_exporters_names_a_target():
    from tfopt.exporters import EXPORTERS

    named = {}
    for path in PACKAGE.rglob("*.py"):
        if PACKAGE / "exporters" in path.parents:
            continue
        tree = ast.parse(path.read_text())
        formats = {id(s.value) for s in tree.body if isinstance(s, ast.Assign)  # a loader's
                   and [getattr(n, "id", None) for n in s.targets] == ["FORMAT"]}  # source
        strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                   and isinstance(node.value, str) and id(node) not in formats}
        hits = sorted(fmt for fmt in EXPORTERS if fmt in strings)
        if hits:
            named[str(path.relative_to(PACKAGE))] = hits
    assert not named
    assert not [p for p in PACKAGE.rglob("*.py") if PACKAGE / "exporters" not in p.parents
                and "openvino" in p.read_text().lower()]


def test_the_pipeline_reads_as_named_stages():
    from tfopt import api

    lines, _ = inspect.getsourcelines(api._run)
    assert len(lines) <= 40


def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = sorted(set(modules()) - {"tfopt.__main__"})  # that one runs the command line
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)"
    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_module_shadows_the_standard_library():
    shadowing = sorted(str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob("*.py")
                       if path.stem in sys.stdlib_module_names)
    assert not shadowing


def test_the_command_line_does_not_import_tensorflow():
    done = subprocess.run([sys.executable, "-c", "import sys, tfopt.commands; "
                           "print('tensorflow' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def _dests(command: str) -> set[str]:
    subparsers = next(a for a in parser()._actions if a.dest == "command")
    return {a.dest for a in subparsers.choices[command]._actions}


@pytest.mark.parametrize("command", ["freeze", "batch"])
def test_every_option_is_a_flag_of_freeze_and_batch(command):
    missing = [f.name for f in option_fields() if f.name not in _dests(command)]
    assert not missing


def test_inspect_takes_every_source_option():
    wanted = {f.name for f in option_fields() if f.metadata["cli"].group == SOURCE}
    assert wanted <= _dests("inspect")


def test_flags_and_manifest_rows_build_the_same_options():
    from tfopt.commands.common import given_options

    argv = ["freeze", "model", "--to", "onnx,pb", "--tag", "serve,gpu", "--input-shape",
            "x=1,8", "--inputs", "it:0:float32:1,8,b", "--freeze-placeholder", "flag=false",
            "--samples", "5", "--atol", "0.01", "--quantize", "fp16", "--objective", "latency",
            "--int8-io", "--passes", "prune,grappler"]
    from_flags = FreezeOptions(**given_options(parser().parse_args(argv)))
    row = {"to": "onnx,pb", "tags": "serve,gpu", "input_shapes": '{"x": [1, 8]}',
           "inputs": "it:0:float32:1,8,b", "freeze_placeholders": '{"flag": "false"}',
           "samples": "5", "atol": "0.01", "quantize": "fp16", "objective": "latency",
           "int8_io": True, "passes": "prune,grappler"}
    from_row = FreezeOptions(**parse_options(row, "row 1"))
    assert from_flags == from_row
    assert from_flags.inputs == ("it:0:float32:1,8", "b")
    assert from_flags.input_shapes == {"x": (1, 8)}
