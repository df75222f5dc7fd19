"""Errors that end a run with a one-line message and a documented exit code."""

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug in tfopt
EXIT_USAGE = 2  # usage error or unreadable input
EXIT_TARGET_FAILED = 3  # a target failed to convert; the others are still written
EXIT_PARITY = 4  # an artifact's outputs differ from the original beyond tolerance
EXIT_SOME_FAILED = 5  # tfopt batch: some models failed
EXIT_OUTPUT = 6  # the output could not be written; nothing was published
EXIT_LIMIT = 7  # the run passed --timeout or --max-memory and was stopped; nothing was published


class TfoptError(Exception):
    """A failure the user can fix; the message names the problem and the fix."""

    exit_code = EXIT_USAGE


class UsageError(TfoptError):
    """Bad flags or options."""


class InputError(TfoptError):
    """The source model cannot be read or is not what it claims to be."""


class ConversionError(TfoptError):
    """A target could not be produced; `details` goes into the report."""

    exit_code = EXIT_TARGET_FAILED

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The line of an exception's message that names the cause: TF and tf2onnx messages
    run to pages. TF's runtime errors start with a header ("Graph execution error:") and a
    stack of where the node was defined; the cause is the first unindented line after it."""
    text = str(exc).strip() or type(exc).__name__
    lines = text.splitlines()
    if lines[0].rstrip().endswith(":") and len(lines) > 1:
        cause = next((line for line in lines[1:] if line.strip() and not line[0].isspace()
                      and not line.startswith(("Detected at node", "File ", "[["))), None)
        if cause is not None:
            return f"{lines[0].rstrip()} {cause.strip()}"[:limit]
    return lines[0][:limit]


class TraceUnavailable(Exception):
    """An artifact whose intermediate tensors cannot be read (said, not failed)."""
