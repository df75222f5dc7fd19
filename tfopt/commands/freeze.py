"""`tfopt SRC -o OUT` (also `tfopt freeze`, `python -m tfopt.freeze`): a thin shell over
tfopt.api.freeze."""
from __future__ import annotations

import argparse

from tfopt.commands.common import EXIT_CODES, given_options, option_parser, run_model
from tfopt.limits import command_line_defaults
from tfopt.options import LIMITS, OUTPUT, QUANTIZE, VERIFY


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
    def convert(**options):
        from tfopt.api import freeze

        return freeze(args.src, args.output, **options)

    return run_model(args, {**command_line_defaults(), **given_options(args)}, convert,
                     lambda artifact: f"target {artifact.format}")
