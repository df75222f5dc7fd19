"""ONNX (`model.onnx`): tf2onnx on the frozen graph (convert.py), the rewrites (rewrites/),
optional quantization (quantize.py), checked by onnx.checker and run in onnxruntime
(runtime.py)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tfopt.errors import ConversionError, UsageError, first_line
from tfopt.exporters.base import Exported, ExportOptions
from tfopt.exporters.onnx.convert import SIDECAR, default_opset, save, to_onnx
from tfopt.exporters.onnx.convert import unsupported_ops as _tf2onnx_unsupported
from tfopt.exporters.onnx.graph import opset
from tfopt.exporters.onnx.quantize import QUANTIZERS, quiet_logging
from tfopt.exporters.onnx.rewrites import FINISH, POST_OPTIMIZE, QUANTIZED_FINISH, run_rewrites
from tfopt.exporters.onnx.runtime import (
    describe,
    open_artifact,
    read_precision,
    runner,
    trace,
    write_tensor_names,
)
from tfopt.graph import compute_precision
from tfopt.model import Model, graphs_paged_out
from tfopt.modes import MODES as QUANTIZE

FORMAT = "onnx"
FILENAME = "model.onnx"
SUFFIX = ".onnx"
COMPANIONS = (SIDECAR,)  # external weights
DEFAULT = True
EXTRA = None
PACKAGES = ("tf2onnx", "onnx", "onnxruntime")
MODES = frozenset(QUANTIZE)
# TF passes that make the frozen graph convertible; TF's CPU kernels may no longer run it
PREPARE = ("nudge_fake_quant", "fake_quant_for_onnx", "fused_nms_to_op",
           "combined_nms_per_class_boxes", "inline_xla_calls", "erfc_to_erf", "bfloat16_in_fp32")

RECURRENT = {"LSTM": "native ONNX LSTM (tf2onnx's LSTM rewriter)",
             "GRU": "native ONNX GRU (tfopt's GRU loop rewrite, verified by running both)",
             "RNN": "native ONNX RNN", "Loop": "generic Loop (no native op matched)",
             "Scan": "generic Scan (no native op matched)"}

__all__ = ["FILENAME", "FORMAT", "MODES", "PREPARE", "default_opset", "describe", "export",
           "open_artifact", "read_precision", "runner", "trace", "unsupported_ops"]


def check_options(options: ExportOptions) -> None:
    """An --opset tf2onnx and the installed onnxruntime support: from 7 (tf2onnx's README:
    6-13 should work, 14-18 are tested) to the highest both take."""
    if options.opset is None:
        return
    high = default_opset()
    if not 7 <= options.opset <= high:
        raise UsageError(f"--opset {options.opset} is outside what tf2onnx and the installed "
                         f"onnxruntime support (7..{high})")


def unsupported_ops(model: Model, options: ExportOptions) -> list[str]:
    return _tf2onnx_unsupported(model, options.opset or default_opset())


def export(model: Model, path: Path, options: ExportOptions) -> Exported:
    kept = compute_precision(model.graph_def)  # bfloat16 was made float32 (bfloat16_in_fp32)
    exported = _finish(to_onnx(model, options.opset or default_opset()), model, path, options)
    note = f"keeps the original's {kept} compute (onnxruntime runs it)" \
        if kept != "float32" else None
    return replace(exported, note=note)


def _finish(proto, model: Model, path: Path, options: ExportOptions) -> Exported:
    """The converted model rewritten, quantized if asked, and saved, with the TF graph paged
    out (what follows reads the ONNX model only, which holds the weights once more); one
    frame, so that each rewrite's input is let go."""
    import onnx

    with graphs_paged_out(model):
        converted = {"step": "tf2onnx", "nodes": len(proto.graph.node), "opset": opset(proto)}
        proto, steps = run_rewrites(proto, POST_OPTIMIZE)
        steps.insert(0, converted)
        recurrent = [{"node": n.name, "op": n.op_type, "conversion": RECURRENT[n.op_type]}
                     for n in proto.graph.node if n.op_type in RECURRENT]
        precision = QUANTIZE[options.quantize].precision
        if options.quantize != "none" and model.weights:
            raise ConversionError("--quantize with external weights (variables of at least "
                                  "--large-weight-bytes) is not supported for ONNX yet; raise "
                                  "--large-weight-bytes if the model fits in 2 GB")
        if options.quantize != "none":
            try:
                with quiet_logging():
                    steps += QUANTIZERS[options.quantize](proto, path, options)
            except ConversionError:
                raise
            except Exception as exc:  # onnxruntime.quantization raises anything
                raise ConversionError(f"onnxruntime cannot quantize to {options.quantize}: "
                                      f"{first_line(exc)}") from exc
            proto = onnx.load(str(path))
        for node in proto.graph.node:  # short_names loses the TF names the trace pairs by
            node.doc_string = "\n".join(node.output)
        proto, named = run_rewrites(proto, QUANTIZED_FINISH if QUANTIZE[options.quantize].integer
                                    else FINISH)
        tensor_names: dict[str, str] = {}
        for node in proto.graph.node:
            tensor_names.update((new, old) for new, old in zip(node.output,
                                                                node.doc_string.split("\n"))
                                if new != old)
            node.doc_string = ""
        if tensor_names:  # so that a trace, in this run or a later compare, pairs them
            write_tensor_names(proto, tensor_names)
        save(proto, path, model.weights)
        if model.weights:  # the in-memory checks never saw the weights: check the files
            try:
                onnx.checker.check_model(str(path), full_check=True)
            except Exception as exc:  # ValidationError, InferenceError
                raise ConversionError(f"the ONNX model with external data is invalid: "
                                      f"{first_line(exc)}") from exc
        return Exported(precision=precision, steps=steps + named, recurrent=recurrent)
