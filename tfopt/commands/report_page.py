"""`tfopt report OUT`: write OUT/report.html again from OUT/report.json (and a batch's
OUT/summary.html from OUT/summary.json)."""
from __future__ import annotations

import argparse
from pathlib import Path

from tfopt.commands.common import guarded
from tfopt.errors import UsageError


def add_parser(commands, parents: list[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "report", help="regenerate the HTML page(s) of an output directory",
        description="Write OUT/report.html from OUT/report.json, and OUT/summary.html from "
                    "OUT/summary.json for a batch.",
        epilog="exit codes: 0 success; 1 internal error; 2 no tfopt report in OUT")
    parser.add_argument("out", help="an output directory of tfopt or tfopt batch")
    parser.add_argument("--debug", action="store_true", help="tracebacks on errors")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    def write() -> list[Path]:
        from tfopt.reporting.pages import write_report, write_summary_page

        out = Path(args.out)
        pages = []
        if (out / "report.json").is_file():
            pages.append(write_report(out))
        if (out / "summary.json").is_file():
            pages.append(write_summary_page(out))
        if not pages:
            raise UsageError(f"{out} holds no report.json or summary.json; pass a directory "
                             "that tfopt or tfopt batch wrote")
        return pages

    pages, code = guarded(write, args.debug)
    if pages is None:
        return code or 1
    for page in pages:
        print(page)
    return 0
