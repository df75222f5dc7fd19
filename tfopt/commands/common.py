"""What every command shares: the one-line error contract, and the flags generated from
FreezeOptions (so the API, `tfopt`, `tfopt inspect` and `tfopt batch` cannot drift apart)."""
from __future__ import annotations

import argparse
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from tfopt.errors import EXIT_INTERNAL, TfoptError
from tfopt.options import SOURCE, option_default, option_fields

T = TypeVar("T")

EXIT_CODES = ("exit codes: 0 success; 1 internal error (a bug: rerun with --debug and report "
              "it); 2 usage error or unreadable input; 3 a target failed to convert (the "
              "others are written); 4 an artifact's outputs differ from the original beyond "
              "tolerance; 5 (batch) some models failed; 6 the output could not be written "
              "(nothing published); 7 the run passed --timeout or --max-memory and was stopped "
              "(nothing published)")


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error contract: no usage block, exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"tfopt: error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def one_line(text: str) -> str:
    """Control characters (a newline in a typed value, say) escaped: the message stays one
    line whatever the user typed."""
    return _CONTROL.sub(lambda found: repr(found.group())[1:-1], text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def guarded(call: Callable[[], T], debug: bool) -> tuple[T | None, int | None]:
    """(call(), None), or (None, exit code) once a TfoptError or a bug is reported in one
    line (traceback with --debug): the contract every command keeps."""
    try:
        return call(), None
    except TfoptError as exc:
        return None, fail(exc, debug, exc.exit_code, "error")
    except Exception as exc:  # a bug: keep the one-line contract, traceback on --debug
        return None, fail(exc, debug, EXIT_INTERNAL, "internal error")


def fail(exc: BaseException, debug: bool, code: int, kind: str) -> int:
    if debug:
        traceback.print_exc()
        print(getattr(exc, "worker_traceback", ""), file=sys.stderr, end="")
    message = one_line(str(exc).splitlines()[0]) if str(exc).strip() else type(exc).__name__
    hint = "" if debug or code != EXIT_INTERNAL else " (rerun with --debug for the traceback)"
    print(f"tfopt: {kind}: {message}{hint}", file=sys.stderr)
    return code


def option_parser(groups: tuple[str, ...]) -> argparse.ArgumentParser:
    """A parent parser with the FreezeOptions flags of the given groups. Flags default to
    None, so that only what the user typed overrides FreezeOptions' own defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    sections = {g: parser.add_argument_group(f"{g} options") for g in groups}
    for spec in option_fields():
        flag = spec.metadata["cli"]
        if flag.group not in groups:
            continue
        default = option_default(spec.name)
        shown = "" if default is None or default is False or default in ({}, ()) else \
            f" (default: {','.join(default) if isinstance(default, tuple) else default})"
        kwargs: dict[str, Any] = {"dest": spec.name, "default": None,  # argparse %-formats
                                  "help": (flag.help + shown).replace("%", "%%")}
        if spec.type in ("bool", bool):
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=flag.parse, choices=flag.choices,
                          metavar=flag.metavar or spec.name.upper())
            if flag.choices:
                kwargs.pop("metavar")
            if flag.repeat:
                kwargs["action"] = "append"
        sections[flag.group].add_argument(flag.flag or "--" + spec.name.replace("_", "-"),
                                          **kwargs)
    return parser


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The FreezeOptions fields the user gave on the command line."""
    given = {}
    for spec in option_fields():
        value = getattr(args, spec.name, None)
        if value is not None:
            given[spec.name] = dict(value) if spec.metadata["cli"].repeat else value
    return given


def source_parser() -> argparse.ArgumentParser:
    """The flags every command takes: what to freeze, and --debug."""
    parser = option_parser((SOURCE,))
    parser.add_argument("--debug", action="store_true", help="show library logs and tracebacks")
    return parser


def run_model(args: argparse.Namespace, options: dict[str, Any],
              call: Callable[..., Any], artifact_name: Callable[[Any], str]) -> int:
    """A command that runs a model (tfopt, tfopt compare): the libraries quieted where the
    run happens, call(progress=, setup=, **options) under the error contract, the summary
    or report.json printed, one stderr line per failed or differing artifact (named by
    artifact_name); the exit code."""
    import functools

    from tfopt.logs import quiet_libraries, quiet_python
    from tfopt.results import WRITTEN

    if options["timeout"] or options["max_memory"]:  # the libraries load in the worker
        quiet_python(args.debug)
    else:
        quiet_libraries(args.debug)

    def run():
        from tfopt.reporting.progress import for_terminal

        return call(progress=for_terminal(args.quiet or args.json),
                    setup=functools.partial(quiet_libraries, args.debug), **options)

    result, code = guarded(run, args.debug)
    if result is None:
        return code or 1
    if args.json:
        print(result.to_json())
    elif not args.quiet:
        print(result.summary())
    for artifact in result.artifacts:
        if artifact.status not in WRITTEN:
            print(f"tfopt: {artifact_name(artifact)} failed: {artifact.error}", file=sys.stderr)
        elif artifact.status == "differs":
            print(f"tfopt: {artifact_name(artifact)} outputs differ from the original: "
                  f"{artifact.parity.reason}; see {result.out_dir}/report.json",
                  file=sys.stderr)
    return result.exit_code
