"""`tfopt SRC -o OUT` (also `tfopt freeze`, `python -m tfopt.freeze`): a thin shell over
tfopt.api.freeze."""
from __future__ import annotations

import argparse
import functools
import sys

from tfopt.commands.common import EXIT_CODES, given_options, guarded, option_parser
from tfopt.limits import command_line_defaults
from tfopt.logs import quiet_libraries, quiet_python
from tfopt.options import LIMITS, OUTPUT, QUANTIZE, VERIFY
from tfopt.report import WRITTEN


def conversion_parser() -> argparse.ArgumentParser:
    """The flags that shape and bound a conversion (tfopt and tfopt batch take them)."""
    return option_parser((OUTPUT, VERIFY, QUANTIZE, LIMITS))


def add_parser(commands, parents: list[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "freeze", parents=parents + [conversion_parser()],
        help="freeze a model into verified artifacts (the default command)", epilog=EXIT_CODES,
        description="Freeze a TensorFlow model into verified ONNX, TFLite, frozen .pb and "
                    "inference SavedModel artifacts.")
    parser.add_argument("src", help="SavedModel directory (TF2 or TF1), Keras .keras/.h5 file, "
                        "TF1 checkpoint .meta, or GraphDef .pb/.pbtxt")
    parser.add_argument("-o", "--output", help="output directory (default: tfopt_out/<name>)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no summary table")
    parser.add_argument("--json", action="store_true", help="print report.json to stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    options = {**command_line_defaults(), **given_options(args)}
    bounded = bool(options["timeout"]) or bool(options["max_memory"])
    if bounded:  # the libraries load in the worker process (tfopt/limits.py)
        quiet_python(args.debug)
    else:
        quiet_libraries(args.debug)

    def convert():
        from tfopt.api import freeze
        from tfopt.progress import for_terminal

        return freeze(args.src, args.output, progress=for_terminal(args.quiet or args.json),
                      setup=functools.partial(quiet_libraries, args.debug), **options)

    result, code = guarded(convert, args.debug)
    if result is None:
        return code or 1
    if args.json:
        print(result.to_json())
    elif not args.quiet:
        print(result.summary())
    for artifact in result.artifacts:
        if artifact.status not in WRITTEN:
            print(f"tfopt: target {artifact.format} failed: {artifact.error}", file=sys.stderr)
    for fmt in result.parity_failures:
        print(f"tfopt: {fmt} outputs differ from the original: "
              f"{result.artifact(fmt).parity.reason}; see "
              f"{result.out_dir}/report.json", file=sys.stderr)
    return result.exit_code
