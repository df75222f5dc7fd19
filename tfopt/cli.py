"""Command line: `tfopt SRC -o OUT` (also `python -m tfopt.freeze`). A thin shell over tfopt.api."""
from __future__ import annotations

import argparse
import sys
import traceback

from tfopt.errors import EXIT_INTERNAL, TfoptError
from tfopt.logs import quiet_libraries

EPILOG = """commands: tfopt SRC (freeze, also `tfopt freeze SRC`); tfopt inspect SRC;
tfopt batch SOURCES... -o OUT (exit 5 when some models fail).
exit codes: 0 success; 1 internal error (a bug: rerun with --debug and report it);
2 usage error or unreadable input; 3 a target failed to convert (the others are written);
4 an artifact's outputs differ from the original beyond tolerance"""


def _shape_arg(text: str) -> tuple[str, list[int]]:
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, [int(d) for d in dims.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not name=d1,d2,... (e.g. "
                                         "image=1,224,224,3)") from None


def value_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"'{text}' is not name=value (e.g. is_training=false)")
    return name, value


def freeze_parser() -> argparse.ArgumentParser:
    from tfopt import __version__

    parser = argparse.ArgumentParser(
        prog="tfopt", epilog=EPILOG,
        description="Freeze a TensorFlow model into verified ONNX, TFLite, frozen .pb and "
                    "inference SavedModel artifacts.")
    parser.add_argument("src", help="SavedModel directory (TF2 or TF1), Keras .keras/.h5 file, "
                        "TF1 checkpoint .meta, or GraphDef .pb/.pbtxt")
    parser.add_argument("-o", "--output", help="output directory (default: tfopt_out/<name>)")
    parser.add_argument("--to", default="onnx,tflite,pb,saved_model",
                        help="comma-separated targets (default: %(default)s)")
    parser.add_argument("--signature", default="serving_default",
                        help="SavedModel signature to freeze (default: %(default)s)")
    parser.add_argument("--tag", help="comma-separated MetaGraph tag set (default: serve)")
    parser.add_argument("--input-shape", action="append", type=_shape_arg, default=[],
                        metavar="NAME=D1,D2,...", help="fix an input's shape (repeatable)")
    parser.add_argument("--inputs", help="TF1 graphs: comma-separated tensors to feed, each "
                        "name[:dtype[:d1,d2,...]] (-1: unknown dim) and replaced by a "
                        "placeholder, e.g. IteratorGetNext:0:float32:1,8,8,1")
    parser.add_argument("--outputs", help="TF1 graphs: comma-separated output tensors")
    parser.add_argument("--freeze-placeholder", action="append", type=value_arg, default=[],
                        metavar="NAME=VALUE", help="TF1 graphs: give a placeholder a constant "
                        "value, e.g. is_training=false (repeatable)")
    parser.add_argument("--data", help=".npz of verification inputs keyed by input name")
    parser.add_argument("--samples", type=int, default=3,
                        help="random verification samples when --data is not given")
    parser.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance")
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: highest supported)")
    quant = parser.add_argument_group("quantization (tflite and onnx targets)")
    quant.add_argument("--quantize", default="none",
                       choices=["none", "fp16", "dynamic", "int8", "int16x8", "auto"],
                       help="post-training quantization (default: %(default)s)")
    quant.add_argument("--calibration", help="calibration data: .npz keyed by input name, a "
                       "directory of .npy files or images, module:function, or random")
    quant.add_argument("--mean", type=float, default=0.0,
                       help="images: subtracted from pixels (0-255) before --scale")
    quant.add_argument("--scale", type=float, default=1.0, help="images: pixel multiplier")
    quant.add_argument("--eval", help=".npz of inputs plus 'labels': quantized artifacts are "
                       "checked on it and their top-1 accuracy reported")
    quant.add_argument("--int8-io", action="store_true",
                       help="TFLite int8: integer inputs and outputs too")
    quant.add_argument("--max-drop", type=float,
                       help="accuracy drop allowed with --eval (default 0.01)")
    quant.add_argument("--min-cosine", type=float,
                       help="override the per-precision cosine-similarity budget")
    quant.add_argument("--min-agreement", type=float,
                       help="override the per-precision top-1 agreement budget")
    quant.add_argument("--objective", default="size", choices=["size", "latency"],
                       help="what --quantize auto minimizes (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty output directory")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no summary table")
    parser.add_argument("--json", action="store_true", help="print report.json to stdout")
    parser.add_argument("--debug", action="store_true",
                        help="show library logs and tracebacks")
    parser.add_argument("--version", action="version", version=f"tfopt {__version__}")
    return parser


def run_freeze(argv: list[str]) -> int:
    args = freeze_parser().parse_args(argv)
    quiet_libraries(args.debug)

    def convert():
        from tfopt.api import freeze
        from tfopt.loaders.tf1 import split_specs

        return freeze(args.src, args.output, targets=args.to.split(","),
                      signature=args.signature,
                      tags=args.tag.split(",") if args.tag else None,
                      input_shapes=dict(args.input_shape), data=args.data,
                      inputs=split_specs(args.inputs) if args.inputs else None,
                      outputs=split_specs(args.outputs) if args.outputs else None,
                      freeze_placeholders=dict(args.freeze_placeholder),
                      samples=args.samples, atol=args.atol, rtol=args.rtol,
                      opset=args.opset, overwrite=args.overwrite,
                      quantize=args.quantize, calibration=args.calibration,
                      eval_data=args.eval, mean=args.mean, scale=args.scale,
                      int8_io=args.int8_io, max_drop=args.max_drop, objective=args.objective,
                      min_cosine=args.min_cosine, min_agreement=args.min_agreement)

    result, code = guarded(convert, args.debug)
    if code is not None:
        return code
    if args.json:
        print(result.to_json())
    elif not args.quiet:
        print(result.summary())
    for artifact in result.artifacts:
        if artifact.status != "ok":
            print(f"tfopt: target {artifact.format} failed: {artifact.error}", file=sys.stderr)
    for fmt in result.parity_failures:
        print(f"tfopt: {fmt} outputs differ from the original beyond tolerance; see "
              f"{result.out_dir}/report.json", file=sys.stderr)
    return result.exit_code


def guarded(call, debug: bool):
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
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    hint = "" if debug or code != EXIT_INTERNAL else " (rerun with --debug for the traceback)"
    print(f"tfopt: {kind}: {message}{hint}", file=sys.stderr)
    return code


def run_inspect(argv: list[str]) -> int:
    from tfopt.inspect import main as inspect_main

    return inspect_main(argv)


def run_batch(argv: list[str]) -> int:
    from tfopt.batch import main as batch_main

    return batch_main(argv)


COMMANDS = {"freeze": run_freeze, "inspect": run_inspect, "batch": run_batch}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return run_freeze(argv)


if __name__ == "__main__":
    sys.exit(main())
