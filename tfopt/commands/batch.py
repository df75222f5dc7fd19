"""`tfopt batch SOURCES -o OUT`: a thin shell over tfopt.batch.run_batch."""
from __future__ import annotations

import argparse
import os

from tfopt.commands.common import given_options, guarded
from tfopt.commands.freeze import conversion_parser
from tfopt.limits import command_line_defaults
from tfopt.logs import quiet_libraries


def add_parser(commands, parents: list[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "batch", parents=parents + [conversion_parser()],
        help="convert many models, each in a worker process, resumably",
        description="Convert many models, each in a worker process, resumably. Every "
                    "conversion flag applies to every model; a manifest row overrides it.",
        epilog="exit codes: 0 every model converted; 2 usage error; 5 some models failed "
               "(see OUT/summary.md)")
    parser.add_argument("sources", nargs="+",
                        help="directories of models, globs, or .jsonl/.csv/.toml manifests")
    parser.add_argument("-o", "--output", required=True, help="output directory")
    runs = parser.add_argument_group("batch options")
    runs.add_argument("--workers", type=int, help="local worker processes (default: CPUs)")
    runs.add_argument("--executor", choices=["local", "ray"], default="local")
    runs.add_argument("--address", help="Ray cluster address (ray://host:10001, auto)")
    runs.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs per Ray task")
    runs.add_argument("--ray-memory", type=int, default=4096, help="MB per Ray task")
    runs.add_argument("--force", action="store_true", help="reconvert up-to-date models")
    runs.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    quiet_libraries(args.debug)

    def convert():
        from tfopt.batch import run_batch

        workers = args.workers or os.cpu_count() or 1
        options = {**command_line_defaults(workers), **given_options(args)}
        return run_batch(args.sources, args.output, workers=workers, executor=args.executor,
                         address=args.address, force=args.force, fail_fast=args.fail_fast,
                         ray_cpus=args.ray_cpus, ray_memory_mb=args.ray_memory, **options)

    result, code = guarded(convert, args.debug)
    if result is None:
        return code or 1
    print(f"tfopt batch: {len(result.records)} models, {len(result.failed)} failed, "
          f"{len(result.skipped)} up to date -> {result.out_dir}/summary.md")
    return result.exit_code
