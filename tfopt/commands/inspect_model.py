"""`tfopt inspect SRC`: a thin shell over tfopt.inspection.inspect."""
from __future__ import annotations

import argparse
import json

from tfopt.commands.common import given_options, guarded
from tfopt.logs import quiet_libraries


def add_parser(commands, parents: list[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "inspect", parents=parents, help="show what a model holds, without converting",
        epilog="exit codes: 0 success; 1 internal error; 2 usage error or unreadable input",
        description="Show a model's signatures (or candidate inputs and outputs), op "
                    "histogram, training-only ops, variables and unsupported ops per target.")
    parser.add_argument("src", help="any model tfopt reads")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    quiet_libraries(args.debug)

    def describe():
        from tfopt.inspection import inspect

        return inspect(args.src, **given_options(args))

    report, code = guarded(describe, args.debug)
    if report is None:
        return code or 1
    from tfopt.inspection import text

    print(json.dumps(report, indent=2, default=str) if args.json else text(report))
    return 0
