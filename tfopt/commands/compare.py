"""`tfopt compare SRC ARTIFACT...`: a thin shell over tfopt.api.compare."""
from __future__ import annotations

import argparse

from tfopt.commands.common import EXIT_CODES, given_options, option_parser, run_model
from tfopt.limits import command_line_defaults
from tfopt.options import LIMITS, VERIFY
from tfopt.verification.pairing import artifact_kinds


def add_parser(commands, parents: list[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "compare", parents=parents + [option_parser((VERIFY, LIMITS))], epilog=EXIT_CODES,
        help="verify existing artifacts (any tool's) against their source model",
        description=f"Run the source model and each artifact ({artifact_kinds()}; made "
                    "by tfopt or any other tool) on the same "
                    "inputs, with the rules of a conversion, and write report.json and "
                    "report.html. Inputs and outputs pair by name, then by position; a "
                    "channels-first artifact of a channels-last model is paired transposed.")
    parser.add_argument("src", help="the source model, as tfopt freeze takes it")
    parser.add_argument("artifacts", nargs="+", metavar="ARTIFACT",
                        help="artifacts to verify against it")
    parser.add_argument("-o", "--output",
                        help="report directory (default: tfopt_compare/<name>)")
    parser.add_argument("--overwrite", action="store_const", const=True, default=None,
                        help="replace a non-empty report directory")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no summary table")
    parser.add_argument("--json", action="store_true", help="print report.json to stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    options = {**command_line_defaults(), **given_options(args)}
    if args.overwrite:
        options["overwrite"] = True

    def verify(**options):
        from tfopt.api import compare

        return compare(args.src, args.artifacts, args.output, **options)

    return run_model(args, options, verify, lambda artifact: str(artifact.path))
