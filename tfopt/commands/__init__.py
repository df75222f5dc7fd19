"""The command line: `tfopt [freeze] SRC`, `tfopt compare SRC ARTIFACT...`, `tfopt inspect SRC`,
`tfopt batch SOURCES -o OUT`.

One argparse parser with a subcommand each; the flags that choose the source are shared
through a parent parser, and every FreezeOptions flag is generated from the options object.
A first argument that is not a command means `freeze`.
"""
from __future__ import annotations

import argparse
import sys

from tfopt.commands import batch, compare, freeze, inspect_model, report_page
from tfopt.commands.common import EXIT_CODES, Parser, source_parser

COMMANDS = {"freeze": freeze, "compare": compare, "inspect": inspect_model, "batch": batch,
            "report": report_page}


def parser() -> argparse.ArgumentParser:
    from tfopt.version import __version__

    top = Parser(
        prog="tfopt", epilog=EXIT_CODES,
        description="Turn a TensorFlow model into lean, verified deployment artifacts. "
                    "`tfopt SRC` is `tfopt freeze SRC`.")
    top.add_argument("--version", action="version", version=f"tfopt {__version__}")
    commands = top.add_subparsers(dest="command", metavar="{freeze,compare,inspect,batch,report}")
    shared = [source_parser()]
    for name, module in COMMANDS.items():
        module.add_parser(commands, shared if name != "report" else [])
    return top


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv = ["freeze"] + argv
    args = parser().parse_args(argv)
    return args.run(args)


__all__ = ["COMMANDS", "main", "parser"]
