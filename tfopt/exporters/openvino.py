"""OpenVINO IR (`model.xml` + `model.bin`), converted by OpenVINO's own TensorFlow frontend
from tfopt's frozen, optimized graph (so every freeze, strip and fold applies), run by its
CPU plugin in f32. fp16 compresses the weights; int8 is NNCF's post-training quantization
on the calibration set (a quantization-aware model keeps its own FakeQuantize ranges)."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from tfopt.errors import ConversionError, first_line
from tfopt.exporters.base import Exported, ExportOptions, Opened, python_callbacks
from tfopt.model import Model, TensorSpec
from tfopt.modes import MODES as QUANTIZE

FORMAT = "openvino"
FILENAME = "model.xml"
SUFFIX = ".xml"
COMPANIONS = ("{stem}.bin",)  # the weights
MODES = frozenset({"none", "fp16", "int8"})
PREPARE = ("unmark_fused_calls",)
DEFAULT = False  # an optional extra: converted when asked for with --to
EXTRA = ("openvino", "openvino")  # (module, pip extra)
PACKAGES = ("openvino", "nncf")
# its CPU plugin computes in bf16 on CPUs that have it (relative error ~5e-3): verify as f32
COMPILE = {"INFERENCE_PRECISION_HINT": "f32"}
# how its frontend names the ops it could not convert
_UNCONVERTED = (re.compile(r"No (?:translator|conversion rule) found for (\w+)"),
                re.compile(r"Conversion is failed for: ([\w, ]+)"))
_STRUCTURE = frozenset({"Parameter", "Result", "Constant"})


def export(model: Model, path: Path, options: ExportOptions) -> Exported:
    import openvino

    converted = _convert(model)
    note = None
    if options.quantize == "int8":
        converted, note = _int8(converted, options)
    openvino.save_model(converted, str(path), compress_to_fp16=options.quantize == "fp16")
    return Exported(precision=QUANTIZE[options.quantize].precision, note=note)


def _convert(model: Model):
    """The IR of the frozen graph, its inputs and outputs named as the signature's, the
    external weights constants of the IR (model.bin has no 2 GB limit; the GraphDef has)."""
    import openvino

    try:
        converted = openvino.convert_model(model.graph_def)
    except Exception as exc:  # OpConversionFailure, GeneralFailure
        blocked = _blocked(str(exc))
        reason = f"ops {', '.join(blocked)}" if blocked else first_line(exc)[:300]
        raise ConversionError(f"OpenVINO's TensorFlow frontend cannot convert {reason}; the "
                              "other targets may hold them (tfopt inspect lists each one's)",
                              details={"blocking_ops": blocked}) from exc
    for ports, specs in ((converted.inputs, model.inputs), (converted.outputs, model.outputs)):
        for spec in specs:
            port = next((p for p in ports if spec.tensor in p.get_names()), None)
            if port is None:
                raise ConversionError(f"OpenVINO's IR has no tensor {spec.tensor} "
                                      f"(signature {'input' if specs is model.inputs else 'output'}"
                                      f" '{spec.name}')")
            port.get_tensor().set_names({spec.name})
    if model.weights:
        _weights_as_constants(converted, model.weights)
    return converted


def _weights_as_constants(converted, weights: dict[str, np.ndarray]) -> None:
    """Each external weight's Parameter replaced by a Constant of its value (copied once:
    OpenVINO shares only writeable arrays, and the weights are read-only maps)."""
    from openvino import opset13

    for parameter in list(converted.get_parameters()):
        names = {name.split(":")[0] for name in parameter.output(0).get_names()}
        weight = next((name for name in names if name in weights), None)
        if weight is None:
            continue
        constant = opset13.constant(weights[weight], shared_memory=False)
        for reader in list(parameter.output(0).get_target_inputs()):
            reader.replace_source_output(constant.output(0))
        converted.remove_parameter(parameter)
    converted.validate_nodes_and_infer_types()


def _blocked(message: str) -> list[str]:
    found = {op.strip() for pattern in _UNCONVERTED for match in pattern.findall(message)
             for op in match.split(",")}
    return sorted(op for op in found if op)


def _int8(converted, options: ExportOptions):
    """NNCF's post-training quantization, or the model's own FakeQuantize ranges."""
    if any(op.get_type_name() == "FakeQuantize" for op in converted.get_ops()):
        return converted, "int8 from the model's own fake-quant ranges"
    try:
        import nncf
    except ImportError:
        raise ConversionError("--quantize int8 for openvino needs NNCF: pip install "
                              "'tfopt[openvino]'") from None
    feeds = options.calibration or []
    ignored = _ops_computing(converted, set(options.float_layers))
    return nncf.quantize(converted, nncf.Dataset(feeds), subset_size=len(feeds),
                         ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None
                         ), None


def _ops_computing(converted, layers: set[str]) -> list[str]:
    """The IR ops whose outputs carry the TF nodes' names (OpenVINO keeps them as tensor
    names `node:0`)."""
    if not layers:
        return []
    return [op.get_friendly_name() for op in converted.get_ordered_ops()
            if any(name.split(":")[0] in layers for out in op.outputs()
                   for name in out.get_names())]


def check_options(options: ExportOptions) -> None:
    """Every value of the options this target reads is valid (options.validate checks them)."""


def unsupported_ops(model: Model, options: ExportOptions) -> list[str]:
    import openvino

    try:
        openvino.convert_model(model.graph_def)
    except Exception as exc:  # the frontend names the ops it could not convert
        return _blocked(str(exc)) or [first_line(exc)[:200]]
    return python_callbacks(model)


def _read(path: Path):
    import openvino

    return openvino.Core().read_model(str(path))


def describe(path: Path, model: Model) -> dict[str, int]:
    return dict(Counter(op.get_type_name() for op in _read(path).get_ordered_ops()
                        if op.get_type_name() not in _STRUCTURE))


def _spec(port) -> TensorSpec:
    shape = port.get_partial_shape()
    dims = None if shape.rank.is_dynamic else tuple(
        d.get_length() if d.is_static else None for d in shape)
    return TensorSpec(port.get_any_name(), np.dtype(port.get_element_type().to_dtype()).name,
                      dims)


def open_artifact(path: Path, signature: str, allow_io_ops: bool = False) -> Opened:
    """An IR as it is (any producer), compiled for the CPU in f32. An IR runs no TF op, so
    it has no side effects to refuse."""
    import openvino

    core = openvino.Core()
    ir = core.read_model(str(path))
    request = core.compile_model(ir, "CPU", COMPILE).create_infer_request()
    outputs = [_spec(p) for p in ir.outputs]

    def run(feed: dict) -> dict:
        result = request.infer(feed)  # copies: the request reuses its buffers
        return {spec.name: np.array(result[i]) for i, spec in enumerate(outputs)}
    return Opened([_spec(p) for p in ir.inputs], outputs, run)


def runner(path: Path, model: Model):
    return open_artifact(path, model.signature).run


def trace(path: Path, feed: dict, signature: str | None = None) -> dict:
    """Every named float op output, by the TF tensor names OpenVINO keeps (any producer)."""
    import openvino

    core = openvino.Core()
    ir = core.read_model(str(path))
    ports = [out for op in ir.get_ordered_ops() if op.get_type_name() not in _STRUCTURE
             for out in op.outputs() if out.get_names()
             and out.get_element_type() == openvino.Type.f32]
    ir.add_outputs(ports)
    request = core.compile_model(ir, "CPU", COMPILE).create_infer_request()
    result = request.infer(feed)
    found: dict = {}
    for i, port in enumerate(ir.outputs):
        for name in port.get_names():
            found[name] = np.array(result[i])
    return found


def read_precision(path: Path) -> str:
    """From the quantization ops and weight types (any producer)."""
    import openvino

    ops = _read(path).get_ordered_ops()
    if any(op.get_type_name() == "FakeQuantize" for op in ops):
        return "int8"
    if any(op.get_type_name() == "Constant" and op.get_element_type() == openvino.Type.f16
           for op in ops):
        return "fp16"
    return "fp32"
